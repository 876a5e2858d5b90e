"""The AMC search, top to bottom (paper §3; docs/method.md#the-loop).

1. Build the problem once from its :class:`~amc.spec.PruneSpec`: data, trained model, and
   the pruner (layer graph, channel scores, cached least-squares statistics).
2. Build the environment: one step per prunable layer, one reward-set evaluation per episode.
3. Run ``episodes`` episodes with DDPG (TD3, SAC) or uniform random policies; the first
   ``warmup`` episodes of the learners are uniform random too, with no updates.
4. Every episode is logged; the best-reward policy is kept in ``best_policy.json``; the
   search state is saved between episodes (:mod:`agents.resume`), so a search stopped at any
   moment, by Ctrl-C, SIGTERM or SIGKILL, continues with :func:`resume_search` as if it had
   never stopped.

The test set is never touched: rewards, and the choice of the best policy, come from the
reward set only. The run folder is :mod:`agents.run_folder`; the output a person sees
(progress bar, TensorBoard, the policy chart) is :mod:`agents.callbacks`.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv

from agents import run_folder
from agents.buffers import EpisodeRewardBuffer
from agents.callbacks import EpisodeLog, SearchCallback
from agents.config import SearchConfig, config_dict, read_config
from agents.ddpg import ALGOS, warmup_steps
from agents.interrupt import SearchInterrupted, SignalHandler, Stop, installed
from agents.noise import TruncatedNormalNoise, noise_scale
from agents.parallel import close_workers, env_options, make_vec_env, run_random_rounds
from agents.resume import SearchState, load_state
from amc.api import base_model_copy, latency_record
from amc.errors import AmcError
from amc.runlock import FolderLock
from amc.spec import PruneSpec
from envs.channel_pruning import ChannelPruningEnv

__all__ = ["SearchConfig", "SearchInterrupted", "make_agent", "resume_search", "search"]


def make_agent(cfg: SearchConfig, env: ChannelPruningEnv, seed: int = 0, vec_env: VecEnv | None = None) -> Any:
    """The SB3 learner for ``cfg.algo`` with AMC's settings (docs/method.md#ddpg-settings).

    ``vec_env``: the learner plays these environments side by side (``--envs N``,
    :mod:`agents.parallel`) instead of ``env``, which still describes the problem.
    """
    layers = env.num_layers
    kwargs: dict[str, Any] = dict(
        policy="MlpPolicy", env=env if vec_env is None else vec_env, actor_lr=cfg.actor_lr, critic_lr=cfg.critic_lr,
        buffer_size=cfg.buffer_episodes * layers, learning_starts=warmup_steps(cfg.warmup, layers, cfg.warmup_convention),
        batch_size=cfg.batch_size, tau=cfg.tau, gamma=cfg.gamma,
        # update after each episode (after each round of N, which SB3 counts in steps), one
        # gradient step per new transition
        train_freq=(1, "episode") if vec_env is None else (layers, "step"), gradient_steps=-1,
        replay_buffer_class=EpisodeRewardBuffer,
        replay_buffer_kwargs={"baseline_rate": cfg.baseline_rate, "stored_action": cfg.stored_action},
        last_layer_init=cfg.last_layer_init, policy_kwargs={"net_arch": list(cfg.hidden)}, seed=seed, device="cpu",
        verbose=0)
    if cfg.algo in ("ddpg", "td3"):
        # sigma is in preserve-ratio units; SB3 samples on [-1, 1]: rescale it to match
        scale = noise_scale(env.lbound, env.action_map)
        auto = cfg.sigma_decay == "auto" and scale > 0
        kwargs["action_noise"] = TruncatedNormalNoise(
            cfg.sigma * scale, cfg.sigma_decay if scale > 0 else 1.0, cfg.warmup, -1.0, 1.0, seed=seed,
            sigma_min=cfg.sigma_min * scale, episodes=cfg.episodes,
            sigma_final=cfg.sigma_final * scale if auto and cfg.sigma_final is not None else None)
    agent = ALGOS[cfg.algo](**kwargs)
    agent.set_logger(Logger(folder=None, output_formats=[]))  # our callback writes the curves
    return agent


def run_random(env: ChannelPruningEnv, log: EpisodeLog, episodes: int, seed: int,
               state: SearchState | None = None, resumed: bool = False,
               should_stop: Callable[[], bool] | None = None) -> None:
    """The baseline: every action uniform on [0, 1], i.e. every preserve ratio on [lbound, 1].

    ``state.boundary()`` runs between episodes; a ``resumed`` search has its generators
    restored. When ``should_stop()`` turns true the loop returns before its next step (the
    unfinished episode is dropped; a resumed search runs it again).
    """
    if not resumed:
        env.action_space.seed(seed)
        env.reset(seed=seed)
        if state is not None:
            state.boundary()
    for e in range(log.episodes, episodes):
        if e or resumed:
            env.reset()
        done = False
        while not done:
            if should_stop is not None and should_stop():
                return
            _, _, done, _, info = env.step(env.action_space.sample())
        log.on_episode(info)
        if state is not None:
            state.boundary()


def search(spec: PruneSpec, cfg: SearchConfig, run: str | Path, progress: bool = True,
           command: list[str] | None = None) -> dict[str, Any]:
    """Search a policy for ``spec`` into the new run folder ``run``; returns the best policy's numbers.

    ``spec.seed`` seeds everything: the calibration sampling, torch, numpy, the env, the agent
    and its noise. The same seed on the same CPU gives the same search, episode for episode.

    Raises:
        SearchInterrupted: on SIGINT or SIGTERM, once the state is saved.
        AmcError: bad settings, or ``run`` is not empty or in use by another process
            (:class:`amc.runlock.FolderLock` is held for the search's whole life).
    """
    spec.validate()
    cfg.validate()
    _check_verify_budget(spec, cfg.verify_top)
    folder = run_folder.prepare_run_dir(run)
    with FolderLock(folder):  # one writer per run folder, for the search's whole life
        run_folder.prepare_run_dir(folder)  # again, locked: no other search began here meanwhile
        return _search(spec, cfg, folder, progress, command, None, None)


def _check_verify_budget(spec: PruneSpec, verify_top: int) -> None:
    if verify_top and spec.budget != "latency":
        raise AmcError("--verify-top times policies against a latency target: it needs a search "
                       "under --budget latency")


def resume_search(run: str | Path, progress: bool = True, verify_top: int | None = None) -> dict[str, Any]:
    """Continue the search saved in ``run`` with the settings of its ``config.json``.

    A finished search is only reported. A search killed during its set-up, after writing
    ``config.json`` but before its first episode, starts again from that ``config.json``
    (everything is seeded, so it is the same search). Raises AmcError when there is nothing
    to resume, and when another process writes to ``run``.

    ``verify_top``: at the end (for a finished search, now) time the K best policies end to
    end (:mod:`agents.verify`), in place of the run's own ``--verify-top``; it changes what
    follows the search, not the search.
    """
    folder = Path(run)
    if not folder.is_dir():
        raise AmcError(f"run folder not found: {folder}")
    with FolderLock(folder):
        return _resume_locked(folder, progress, verify_top)


def _resume_locked(folder: Path, progress: bool, verify_top: int | None = None) -> dict[str, Any]:
    spec, cfg, config = run_folder.read_run_config(folder)
    check = cfg
    if verify_top is not None:
        check = dataclasses.replace(cfg, verify_top=verify_top).validate()
        _check_verify_budget(spec, verify_top)
    if run_folder.stopped_in_setup(folder):
        sys.stderr.write(f"note: the search in {folder} was stopped during its set-up, before its first "
                         "episode; starting it again with the settings of its config.json\n")
        run_folder.remove(folder, tuple(n for n in run_folder.FILES if n != "config.json"))
        command = config.get("command") if isinstance(config.get("command"), list) else None
        return _search(spec, cfg, folder, progress, command, None, None, restart=True, verify=check)
    state = load_state(folder)
    try:
        saved = config_dict(*read_config(state.get("config"), "the search state"))
    except AmcError:
        saved = None
    if saved != config_dict(spec, cfg):
        raise AmcError(f"{folder / 'config.json'} was changed after the search state was saved; "
                       "resuming would not continue the same search")
    done = int(state["log"]["episodes"])
    if done >= cfg.episodes:
        best = state["log"]["best"]
        if best is None:
            raise AmcError(f"the search state in {folder} finished without any episode")
        out = run_folder.result(best, done, config.get("base_reward_top1"), float(state["log"]["seconds"]),
                                folder, resumed_at=done)
        if verify_top:  # the table and the architecture are all the timing needs
            problem = spec.build(progress=progress, calibrate=False, latency=True)
            _check_same_table(config, problem.pruner, folder)
            _add_verified(out, _verify(folder, check, spec, problem.pruner, progress))
        return out
    return _search(spec, cfg, folder, progress, None, state, config, verify=check)


def _search(spec: PruneSpec, cfg: SearchConfig, run: Path, progress: bool, command: list[str] | None,
            state: dict[str, Any] | None, config: dict[str, Any] | None, restart: bool = False,
            verify: SearchConfig | None = None) -> dict[str, Any]:
    """The search loop; ``restart``: a search started again by ``--resume`` after it was killed
    during its set-up (a stop before its first episode then keeps ``config.json``, so
    ``--resume`` still starts it); ``verify``: the settings of the ``--verify-top`` that
    follows the search (default ``cfg``)."""
    from amc.train import resolve_device

    resumed = state is not None
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif resumed and isinstance(config.get("threads"), int):
        torch.set_num_threads(config["threads"])  # same threads, same floating-point sums
    set_random_seed(spec.seed)
    wrote = False  # a fresh search stopped before its first episode removes what it wrote
    keeper: SearchState | None = None
    log: EpisodeLog | None = None
    vec: VecEnv | None = None
    signals = SignalHandler()
    with installed(signals):
        try:
            latency = spec.budget == "latency" or cfg.reward == "latency"
            problem = spec.build(progress=progress, latency=latency)
            pruner = problem.pruner
            env = ChannelPruningEnv(problem=problem, **env_options(spec, cfg, device))
            if resumed:
                base_top1 = config.get("base_reward_top1")
                _check_same_table(config, pruner, run)
                if config.get("num_layers") != pruner.num_layers:
                    raise AmcError(f"the model now has {pruner.num_layers} prunable layers, the run "
                                   f"{config.get('num_layers')}: its model or weights changed; cannot resume")
            else:
                base_top1 = env.reward_top1(base_model_copy(problem, device))
                wrote = True
                run_folder.write_config(run, spec, cfg, problem, env, base_top1, device, command)

            best_extra = {"reward_mode": cfg.reward, "target": env.target, "budget": spec.budget, "algo": cfg.algo,
                          "seed": spec.seed, "base_reward_top1": base_top1}
            if pruner.latency is not None:
                best_extra["latency_target"] = latency_record(pruner.latency)
            if cfg.envs > 1:  # the workers build their own copies of the problem (agents.parallel)
                vec = make_vec_env(spec, cfg, device, latency)
            agent = make_agent(cfg, env, spec.seed, vec) if cfg.learns else None
            if agent is not None and resumed:
                agent.env.reset()  # SB3's Monitor wants a reset before the first step; the state overrides it
            log = EpisodeLog(run, pruner, cfg.episodes, best_extra, progress=progress,
                             start=state["log"] if resumed else None)
            keeper = SearchState(run, config_dict(spec, cfg), log, env, agent, cfg.save_every, cfg.episodes)
            if resumed:
                keeper.restore(state)
                if progress:
                    log.bar.write(f"resuming {run} at episode {log.episodes} of {cfg.episodes}", file=sys.stderr)
            signals.deferred = True
            if agent is not None:
                agent.learn(total_timesteps=cfg.episodes * pruner.num_layers - agent.num_timesteps,
                            callback=SearchCallback(log, keeper.boundary, resumed=resumed,
                                                    should_stop=signals.stop_requested,
                                                    sigma_scale=noise_scale(env.lbound, env.action_map)),
                            log_interval=1, reset_num_timesteps=not resumed)
            elif vec is not None:
                run_random_rounds(vec, env, log, cfg.episodes, spec.seed, keeper, resumed=resumed,
                                  should_stop=signals.stop_requested)
            else:
                run_random(env, log, cfg.episodes, spec.seed, keeper, resumed=resumed,
                           should_stop=signals.stop_requested)
            if signals.signum is not None and log.episodes < cfg.episodes:
                raise Stop(signals.signum)
            keeper.save_latest()
            seconds = log.state_dict()["seconds"]
            log.close()
            if vec is not None:
                close_workers(vec)
                vec = None
            verified = _verify(run, verify or cfg, spec, pruner, progress)
        except Stop as stop:
            saved = keeper.save_latest() if keeper is not None else None
            if saved is None and resumed:
                saved = int(state["log"]["episodes"])  # stopped while setting up: the old state stands
            if log is not None:
                if keeper is not None and keeper.latest is not None:
                    log.rollback(keeper.latest["log"])
                log.close(final=False)
            if saved is None and not resumed and wrote:
                run_folder.remove(run, tuple(n for n in run_folder.FILES if not (restart and n == "config.json")))
            raise SearchInterrupted(run, saved, cfg.episodes, stop.signum,
                                    resumable=saved is not None or resumed or restart) from None
        except BaseException as e:
            if log is not None:
                log.close(final=False)
            if vec is not None and isinstance(e, (EOFError, BrokenPipeError, ConnectionResetError)):
                saved = keeper.saved_episodes if keeper is not None else None
                raise AmcError(f"a worker process of --envs {cfg.envs} died (out of memory?); "
                               + (f"{saved} episodes are saved, resume with: amc search --resume {run}"
                                  if saved is not None else "nothing was saved")) from e
            raise
        finally:
            if vec is not None:
                close_workers(vec)
    assert log.best is not None and keeper is not None
    out = run_folder.result(log.best, log.episodes, base_top1, seconds, run,
                            resumed_at=state["log"]["episodes"] if resumed else None)
    out["state_save"] = keeper.cost()
    _add_verified(out, verified)
    return out


def _check_same_table(config: dict[str, Any], pruner: Any, run: Path) -> None:
    """Warn when the latency table loaded now is not the one the run was searched with (the
    cache was rebuilt since): predictions, and a resumed search's wall, then use the new one."""
    recorded = config.get("latency") if isinstance(config.get("latency"), dict) else {}
    want = recorded.get("predicted_full_ms")
    if pruner.latency is None or not isinstance(want, (int, float)):
        return
    if abs(pruner.latency.full - want) > 1e-9 * max(1.0, abs(want)):
        sys.stderr.write(f"warning: the latency table in the cache is not the one {run} was searched with (the "
                         f"base predicted at {pruner.latency.full:.3f} ms, the run recorded {want:.3f} ms; it was "
                         "rebuilt since): predictions from here on use the new one\n")


def _add_verified(out: dict[str, Any], verified: dict[str, Any] | None) -> None:
    if verified is not None:
        out["verified"] = {k: verified[k] for k in ("chosen_episode", "measured_within_target")}


def _verify(run: Path, cfg: SearchConfig, spec: PruneSpec, pruner: Any, progress: bool) -> dict | None:
    """``--verify-top``: time the best policies end to end (:mod:`agents.verify`)."""
    if not cfg.verify_top or pruner.latency is None:
        return None
    from agents.verify import verify_top

    record = verify_top(run, pruner, spec.target, cfg.verify_top, progress=progress)
    if progress:
        chosen = next(r for r in record["candidates"] if r["episode"] == record["chosen_episode"])
        sys.stderr.write(f"verified {len(record['candidates'])} best policies end to end: episode "
                         f"{chosen['episode']} measures {chosen['measured_ratio']:.3f} of the base (predicted "
                         f"{chosen['predicted_ratio']:.3f}, target {spec.target:g})"
                         + ("" if record["measured_within_target"] else
                            f"; none measured within the target, so the fastest (they measure "
                            f"{record['measured_over_predicted']:.2f}x their prediction: --target "
                            f"{record['suggested_target']:.3f} would aim a new search at {spec.target:g})")
                         + f"; wrote {run / 'verified_policy.json'}\n")
    return record

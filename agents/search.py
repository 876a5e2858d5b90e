"""The AMC search, top to bottom: config, set-up, the episodes, the result (paper §3, spec §1, §6).

1. Load the data and the trained model, and build the pruner once (layer graph, channel
   scores, cached least-squares statistics from the calibration images).
2. Build the environment: one step per prunable layer, one reward-set evaluation per episode.
3. Run ``episodes`` episodes with DDPG (TD3, SAC) or uniform random policies; the first
   ``warmup`` episodes of the learners are uniform random too, with no updates.
4. Every episode is logged; the best-reward policy is kept in ``best_policy.json``; the
   search state is saved between episodes (:mod:`agents.resume`), so a search stopped at any
   moment, by Ctrl-C, SIGTERM or SIGKILL, continues with :func:`resume_search` as if it had
   never stopped.

The test set is never touched: rewards, and the choice of the best policy, come from the
reward set only.
"""
from __future__ import annotations

import contextlib
import copy
import math
import platform
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.utils import set_random_seed

from agents.buffers import EpisodeRewardBuffer
from agents.callbacks import EpisodeLog, SearchCallback
from agents.ddpg import ALGOS
from agents.noise import TruncatedNormalNoise
from agents.resume import STATE_FILE, SearchState, load_state
from amc.checkpoint import atomic_write_json, fresh_dir, read_json
from amc.errors import AmcError
from envs.channel_pruning import ChannelPruningEnv
from envs.problem import load_problem
from envs.rewards import REWARDS


@dataclass
class SearchConfig:
    """Everything that decides a search; ``config.json`` in the run folder holds it resolved."""

    # --- what is pruned
    model: str = "plain20"
    """Zoo name, ``tv:NAME`` or ``path/to/file.py:factory``."""
    weights: str | None = None
    """State_dict file; zoo models default to the shipped weights for the dataset."""
    width: float | None = None
    """Width multiplier of a zoo model (None: that of the shipped weights, else 1.0)."""
    dataset: str = "fashion-mnist"
    """``fashion-mnist``, ``cifar10`` or ``imagefolder:PATH``."""
    data_dir: str | None = None
    """Where the dataset lies (else $AMC_DATA, the Debian package, then a download)."""
    mean: list[float] | None = None
    """Normalisation mean override (None: the dataset's)."""
    std: list[float] | None = None
    """Normalisation std override (None: the dataset's)."""
    image_size: int = 224
    """Image size for ``imagefolder:`` datasets."""
    reward_set_size: int = 5000
    """Training images held out as the reward set (spec §7: 5,000 for CIFAR-sized data)."""
    split_seed: int = 0
    """Seed of the reward-set split (keep it equal to the base model's training split)."""

    # --- the MDP
    reward: str = "acc"
    """``acc`` (-Error, budget wall on), ``flops`` or ``params`` (-Error * log(resource), no wall)."""
    target: float = 0.5
    """Budget for ``acc``: the fraction of the full FLOPs (or params, see ``budget``) to keep."""
    budget: str = "flops"
    """Resource the wall constrains with ``reward=acc``: ``flops`` or ``params``."""
    lbound: float = 0.2
    """Smallest preserve ratio of a layer (official: 0.2)."""
    channel_round: int = 1
    """Kept channels are rounded to a multiple of this (8 for ImageNet-sized nets)."""
    fill_budget: bool = False
    """Add a lower wall so every episode ends at the budget (an extension; the paper's wall is
    an upper bound only, and policies that leave budget unused lose accuracy)."""
    coupled: str = "skip"
    """Residual-tied channels: ``skip`` leaves them alone, ``shared`` prunes each set with one ratio."""
    criterion: str = "l1"
    """Channel-selection criterion (AMC: L1 norm of the consumer's weights)."""
    reconstruct: bool = True
    """Refit each pruned layer by least squares on the calibration images (spec §4)."""
    max_cache_mb: float | None = 2048
    """Refuse to start when the least-squares cache (``8 d (d + n)`` bytes per layer) would exceed
    this many MB (None: no limit)."""
    calib_batches: int = 60
    """Calibration batches from the training split (official: 60)."""
    calib_batch_size: int = 50
    """Images per calibration batch (official: 50)."""
    points_per_image: int = 10
    """Sampled output positions per calibration image (official: 10)."""

    # --- the search
    algo: str = "ddpg"
    """``ddpg`` (AMC), ``td3``, ``sac``, or ``random`` (uniform policies: the honest baseline)."""
    episodes: int = 400
    """Episodes in all, warm-up included (paper: 400)."""
    warmup: int = 100
    """Episodes of uniform random actions before the first update (paper: 100)."""
    hidden: list[int] = field(default_factory=lambda: [300, 300])
    """Hidden layers of the actor and of the critic (paper: 300-300)."""
    actor_lr: float = 1e-4
    """Actor's Adam learning rate."""
    critic_lr: float = 1e-3
    """Critic's Adam learning rate (also SAC's entropy coefficient's)."""
    tau: float = 0.01
    """Soft target update rate."""
    gamma: float = 1.0
    """Discount (1: every layer's choice counts fully towards the final reward)."""
    batch_size: int = 64
    """Transitions per gradient step."""
    buffer_episodes: int = 100
    """Replay buffer capacity in episodes (times the number of layers)."""
    sigma: float = 0.5
    """Initial sigma of the truncated-normal exploration, in preserve-ratio units."""
    sigma_decay: float = 0.95
    """Factor on sigma per episode after the warm-up."""
    baseline_rate: float = 0.5
    """Step size of the moving reward baseline subtracted from each batch (0: off)."""
    seed: int = 0
    """Seeds torch, numpy, the env, SB3, the noise, and the calibration sampling."""
    device: str = "cpu"
    """Where the pruned models are evaluated: ``cpu``, ``cuda`` or ``auto`` (the agent stays on CPU)."""
    eval_batch_size: int | None = None
    """Reward-set images per forward pass (None: 256 on CPU, 1024 on GPU)."""
    threads: int | None = None
    """torch CPU threads (None: torch's choice)."""
    save_every: int = 1
    """Episodes between two saves of the search state (a clean stop saves the latest anyway)."""

    @property
    def learns(self) -> bool:
        return self.algo != "random"

    def validate(self) -> None:
        """One readable AmcError for the first bad value (before any file is written)."""
        if self.reward not in REWARDS:
            raise AmcError(f"unknown reward {self.reward!r}; choose one of {', '.join(REWARDS)}")
        if self.algo not in (*ALGOS, "random"):
            raise AmcError(f"unknown algo {self.algo!r}; choose one of {', '.join([*ALGOS, 'random'])}")
        if self.target is None or not math.isfinite(self.target) or not (0.0 < self.target <= 1.0):
            raise AmcError(f"--target-flops must be in (0, 1], got {self.target}")
        if self.budget not in ("flops", "params"):
            raise AmcError(f"--budget must be flops or params, got {self.budget!r}")
        if not math.isfinite(self.lbound) or not (0.0 < self.lbound <= 1.0):
            raise AmcError(f"--lbound must be in (0, 1], got {self.lbound}")
        if self.channel_round < 1:
            raise AmcError(f"--channel-round must be >= 1, got {self.channel_round}")
        if self.episodes < 1:
            raise AmcError(f"--episodes must be >= 1, got {self.episodes}")
        if self.warmup < 0:
            raise AmcError(f"--warmup must be >= 0, got {self.warmup}")
        if self.learns and self.episodes <= self.warmup:
            raise AmcError(f"--episodes ({self.episodes}) must be greater than --warmup ({self.warmup}), "
                           "or the agent never learns")
        for name in ("actor_lr", "critic_lr", "tau", "sigma", "sigma_decay", "baseline_rate", "gamma"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise AmcError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")
        if not 0 < self.sigma_decay <= 1:
            raise AmcError(f"--sigma-decay must be in (0, 1], got {self.sigma_decay}")
        for name in ("batch_size", "buffer_episodes", "eval_batch_size", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise AmcError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise AmcError(f"--hidden needs positive layer sizes, got {self.hidden}")
        for name in ("seed", "split_seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_SEED:
                raise AmcError(f"--{name.replace('_', '-')} must be an integer in [0, {MAX_SEED}], got {v}")
        if self.image_size < 1:
            raise AmcError(f"--image-size must be >= 1, got {self.image_size}")
        if self.save_every < 1:
            raise AmcError(f"--save-every must be >= 1, got {self.save_every}")
        if self.max_cache_mb is not None and (not math.isfinite(self.max_cache_mb) or self.max_cache_mb <= 0):
            raise AmcError(f"--max-cache-mb must be a positive number, got {self.max_cache_mb}")

    @classmethod
    def from_dict(cls, d: Any, source: str = "config") -> "SearchConfig":
        """The config recorded in a run's ``config.json``, validated."""
        if not isinstance(d, dict):
            raise AmcError(f"{source} lacks the search settings (a 'config' object); was it written by amc search?")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise AmcError(f"{source} has settings this version of amc does not know: {', '.join(unknown)}")
        try:
            cfg = cls(**d)
            cfg.validate()
        except TypeError as e:
            raise AmcError(f"{source}: {e}") from e
        return cfg


MAX_SEED = 2**32 - 1
"""Seeds are unsigned 32-bit integers (numpy's legacy seeding takes no more)."""


def make_agent(cfg: SearchConfig, env: ChannelPruningEnv) -> Any:
    """The SB3 learner for ``cfg.algo`` with AMC's settings (spec §6)."""
    layers = env.num_layers
    kwargs: dict[str, Any] = dict(
        policy="MlpPolicy", env=env, actor_lr=cfg.actor_lr, critic_lr=cfg.critic_lr,
        buffer_size=cfg.buffer_episodes * layers, learning_starts=cfg.warmup * layers,
        batch_size=cfg.batch_size, tau=cfg.tau, gamma=cfg.gamma,
        # update after each episode, one gradient step per transition of that episode
        train_freq=(1, "episode"), gradient_steps=-1,
        replay_buffer_class=EpisodeRewardBuffer, replay_buffer_kwargs={"baseline_rate": cfg.baseline_rate},
        policy_kwargs={"net_arch": list(cfg.hidden)}, seed=cfg.seed, device="cpu", verbose=0)
    if cfg.algo in ("ddpg", "td3"):
        # the env maps [0, 1] onto [lbound, 1]; SB3 samples on [-1, 1]: rescale sigma to match
        scale = 2.0 / (1.0 - cfg.lbound) if cfg.lbound < 1.0 else 0.0
        kwargs["action_noise"] = TruncatedNormalNoise(cfg.sigma * scale, cfg.sigma_decay, cfg.warmup,
                                                      -1.0, 1.0, seed=cfg.seed)
    agent = ALGOS[cfg.algo](**kwargs)
    agent.set_logger(Logger(folder=None, output_formats=[]))  # our callback writes the curves
    return agent


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("amc", "torch", "torchvision", "stable-baselines3", "gymnasium", "numpy", "torch-pruning"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def prepare_run_dir(path: str | Path) -> Path:
    """An empty, writable run folder; an existing non-empty one is refused (no silent overwrite)."""
    run = Path(path)
    hint = None
    if (run / STATE_FILE).is_file():
        hint = f"run folder {run} holds a search already; continue it with: amc search --resume {run} " \
               "(or choose another --run)"
    elif run.is_dir() and any(run.iterdir()):
        hint = f"run folder {run} already exists and is not empty; choose another --run or delete it"
    return fresh_dir(run, "--run", hint)


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


class SearchInterrupted(KeyboardInterrupt):
    """A search stopped by SIGINT or SIGTERM after saving its state.

    A KeyboardInterrupt, so a caller that does not catch it stops as on Ctrl-C.

    Attributes:
        run: the run folder.
        episodes: episodes the saved state covers (None: stopped before the first one, nothing saved).
        total: planned episodes.
        signum: the signal.
    """

    def __init__(self, run: Path, episodes: int | None, total: int, signum: int) -> None:
        self.run, self.episodes, self.total, self.signum = run, episodes, total, signum
        name = signal.Signals(signum).name
        if episodes is None:
            what = f"stopped by {name} before the first episode; nothing to resume, start it again"
        else:
            what = (f"stopped by {name} after {episodes} of {total} episodes; the search state is saved in {run}\n"
                    f"resume with: amc search --resume {run}")
        super().__init__(what)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class _Stop(BaseException):
    """Raised on SIGINT or SIGTERM during set-up; a BaseException so no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """The SIGINT and SIGTERM handler of a search.

    During set-up a signal raises :class:`_Stop` at once: there is nothing to save yet. Once
    episodes run (``deferred``), it only records the signal, and the search stops at its next
    step. Raising from a handler at an arbitrary point could leave a lock of the TensorBoard
    writer or of a queue held, and the clean stop would then hang.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferred = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            return  # stopping already: a second Ctrl-C must not tear what is being saved
        self.signum = signum
        if not self.deferred:
            raise _Stop(signum)

    def stop_requested(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def _installed(handler: _Signals):
    """``handler`` takes SIGINT and SIGTERM (main thread only; elsewhere signals stay as they are)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_search(cfg: SearchConfig, run_dir: str | Path, progress: bool = True,
               command: list[str] | None = None) -> dict[str, Any]:
    """Run one search into ``run_dir``; returns the best policy's numbers.

    Raises:
        SearchInterrupted: on SIGINT or SIGTERM, once the state is saved.
    """
    cfg.validate()
    run = prepare_run_dir(run_dir)
    return _search(cfg, run, progress, command, None, None)


def resume_search(run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Continue the search saved in ``run_dir`` with the settings of its ``config.json``.

    A finished search is only reported. Raises AmcError when there is nothing to resume.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise AmcError(f"run folder not found: {run}")
    if not (run / "config.json").is_file():
        raise AmcError(f"{run} has no config.json; --resume takes a run folder of amc search")
    config = read_json(run / "config.json")
    if not isinstance(config, dict):
        raise AmcError(f"{run / 'config.json'} is not a search's config")
    cfg = SearchConfig.from_dict(config.get("config"), source=str(run / "config.json"))
    state = load_state(run)
    if state.get("config") != asdict(cfg):
        raise AmcError(f"{run / 'config.json'} was changed after the search state was saved; "
                       "resuming would not continue the same search")
    done = int(state["log"]["episodes"])
    if done >= cfg.episodes:
        best = state["log"]["best"]
        if best is None:
            raise AmcError(f"the search state in {run} finished without any episode")
        seconds = float(state["log"]["seconds"])
        return _result(best, done, config.get("base_reward_top1"), seconds, run, resumed_at=done)
    return _search(cfg, run, progress, None, state, config)


def _result(best: dict, episodes: int, base_top1: float | None, seconds: float, run: Path,
            resumed_at: int | None = None) -> dict[str, Any]:
    out = {"best_reward": best["reward"], "best_reward_top1": best["reward_top1"],
           "best_flops_ratio": best["flops_ratio"], "best_params_ratio": best["params_ratio"],
           "best_episode": best["episode"], "best_ratios": best["ratios"], "episodes": episodes,
           "base_reward_top1": base_top1, "seconds": round(seconds, 2),
           "seconds_per_episode": round(seconds / max(1, episodes), 4), "run": str(run)}
    if resumed_at is not None:
        out["resumed_at_episode"] = resumed_at
    return out


def _search(cfg: SearchConfig, run: Path, progress: bool, command: list[str] | None,
            state: dict[str, Any] | None, config: dict[str, Any] | None) -> dict[str, Any]:
    from amc.train import resolve_device

    resumed = state is not None
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif resumed and isinstance(config.get("threads"), int):
        torch.set_num_threads(config["threads"])  # same threads, same floating-point sums
    set_random_seed(cfg.seed)
    written: list[str] = []  # what a fresh search stopped before its first episode removes again
    keeper: SearchState | None = None
    log: EpisodeLog | None = None
    signals = _Signals()
    with _installed(signals):
        try:
            problem = load_problem(cfg.model, cfg.weights, cfg.dataset, cfg.data_dir, cfg.width, cfg.reward_set_size,
                                   cfg.split_seed, cfg.mean, cfg.std, cfg.image_size, cfg.calib_batches,
                                   cfg.calib_batch_size, cfg.points_per_image, cfg.reconstruct, cfg.coupled,
                                   cfg.criterion, cfg.seed, progress=progress, max_cache_mb=cfg.max_cache_mb)
            pruner = problem.pruner
            env = ChannelPruningEnv(problem=problem, reward=cfg.reward, target=cfg.target, budget=cfg.budget,
                                    lbound=cfg.lbound, channel_round=cfg.channel_round, fill_budget=cfg.fill_budget,
                                    reconstruct=cfg.reconstruct,
                                    device=device, eval_batch_size=cfg.eval_batch_size)
            if resumed:
                base_top1 = config.get("base_reward_top1")
                if config.get("num_layers") != pruner.num_layers:
                    raise AmcError(f"the model now has {pruner.num_layers} prunable layers, the run "
                                   f"{config.get('num_layers')}: its model or weights changed; cannot resume")
            else:
                base_top1 = env.reward_top1(copy.deepcopy(pruner.model).to(device) if device.type != "cpu"
                                            else pruner.model)
                written += ["config.json", "episodes.jsonl", "best_policy.json", "tb", STATE_FILE]
                atomic_write_json(run / "config.json", {
                    "config": asdict(cfg), "algo": cfg.algo, "device": str(device),
                    "threads": torch.get_num_threads(), "eval_batch_size": env.eval_batch_size,
                    "model": problem.model_spec, "weights": problem.weights,
                    "split": problem.splits.record if problem.splits else None,
                    "wall": env.target is not None, "num_layers": pruner.num_layers,
                    "layers": [{"group": g.index, "layer": g.layer, "channels": g.channels}
                               for g in pruner.graph.groups],
                    "skipped": [{"layers": n, "reason": r} for n, r in pruner.graph.skipped],
                    "flops": pruner.flops.full, "params": pruner.params.full, "base_reward_top1": base_top1,
                    "feature_cache_bytes": pruner.cache.nbytes if pruner.cache is not None else 0,
                    "versions": package_versions(), "command": command or sys.argv,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S")})

            best_extra = {"reward_mode": cfg.reward, "target": env.target, "budget": cfg.budget, "algo": cfg.algo,
                          "seed": cfg.seed, "base_reward_top1": base_top1}
            agent = make_agent(cfg, env) if cfg.learns else None
            if agent is not None and resumed:
                agent.env.reset()  # SB3's Monitor wants a reset before the first step; the state overrides it
            log = EpisodeLog(run, pruner, cfg.episodes, best_extra, progress=progress,
                             start=state["log"] if resumed else None)
            keeper = SearchState(run, asdict(cfg), log, env, agent, cfg.save_every, cfg.episodes)
            if resumed:
                keeper.restore(state)
                if progress:
                    log.bar.write(f"resuming {run} at episode {log.episodes} of {cfg.episodes}", file=sys.stderr)
            signals.deferred = True
            if agent is not None:
                layers = pruner.num_layers
                agent.learn(total_timesteps=cfg.episodes * layers - agent.num_timesteps,
                            callback=SearchCallback(log, keeper.boundary, resumed=resumed,
                                                    should_stop=signals.stop_requested),
                            log_interval=1, reset_num_timesteps=not resumed)
            else:
                run_random(env, log, cfg.episodes, cfg.seed, keeper, resumed=resumed,
                           should_stop=signals.stop_requested)
            if signals.signum is not None and log.episodes < cfg.episodes:
                raise _Stop(signals.signum)
            keeper.save_latest()
            seconds = log.state_dict()["seconds"]
            log.close()
        except _Stop as stop:
            saved = keeper.save_latest() if keeper is not None else None
            if saved is None and resumed:
                saved = int(state["log"]["episodes"])  # stopped while setting up: the old state stands
            if log is not None:
                if keeper is not None and keeper.latest is not None:
                    log.rollback(keeper.latest["log"])
                log.close(final=False)
            if saved is None and not resumed:
                _remove(run, written)
            raise SearchInterrupted(run, saved, cfg.episodes, stop.signum) from None
        except BaseException:
            if log is not None:
                log.close(final=False)
            raise
    best = log.best
    assert best is not None
    return _result(best, log.episodes, base_top1, seconds, run, resumed_at=state["log"]["episodes"] if resumed else None)


def _remove(run: Path, names: list[str]) -> None:
    for name in names:
        p = run / name
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)

"""Parallel episodes inside one search: ``amc search --envs N`` (docs/method.md#parallel-episodes).

N copies of the environment run in worker processes, through stable-baselines3's
:class:`~stable_baselines3.common.vec_env.SubprocVecEnv`. Every episode has one step per
prunable layer, so the N episodes of a round run in lockstep and end together; then the
agent updates once, one gradient step per new transition (N x layers).

Each worker builds the search's problem from the same :class:`~amc.spec.PruneSpec` and seed:
the same calibration images and least-squares cache, the same reward set. A policy's reward
therefore does not depend on which worker scored it. That costs N copies of the cache in
memory; a slice per worker would make the reward a function of the worker.

Determinism: every action is chosen in the main process and the workers are deterministic,
so the same seed and the same N give the same search. Another N gives another DDPG search
(its updates come at other episodes); a random search draws each round's actions episode
after episode from the one generator, so it is the same search for every N.
"""
from __future__ import annotations

import functools
import signal
import threading
from typing import Any, Callable

import numpy as np
import torch
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import SubprocVecEnv
from tqdm import tqdm

from amc.spec import PruneSpec
from envs.channel_pruning import ChannelPruningEnv


def env_options(spec: PruneSpec, cfg: Any, device: Any) -> dict[str, Any]:
    """The :class:`ChannelPruningEnv` arguments of a search, besides its problem."""
    return dict(reward=cfg.reward, target=spec.target, budget=spec.budget, lbound=spec.lbound,
                channel_round=spec.channel_round, fill_budget=spec.fill_budget, reconstruct=spec.reconstruct,
                device=device, eval_batch_size=cfg.eval_batch_size, action_map=cfg.action_map)


def _worker_env(spec: PruneSpec, options: dict[str, Any], threads: int, latency: bool) -> Monitor:
    """Runs in a worker: build the problem as the main process did, and its environment."""
    # Ctrl-C and SIGTERM reach the whole process group; the main process stops the search
    # between rounds and closes the workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # tqdm's default lock is a multiprocessing semaphore: a worker killed while holding one
    # (out of memory) would leave a "leaked semaphore" warning at exit; a thread lock suffices
    tqdm.set_lock(threading.RLock())
    torch.set_num_threads(threads)
    set_random_seed(spec.seed)
    problem = spec.build(progress=False, latency=latency)
    return Monitor(ChannelPruningEnv(problem=problem, **options))


def worker_threads(envs: int, threads: int | None) -> int:
    """torch threads per worker: ``--threads`` when given, else the cores shared out."""
    return threads if threads else max(1, torch.get_num_threads() // envs)


def make_vec_env(spec: PruneSpec, cfg: Any, device: Any, latency: bool) -> SubprocVecEnv:
    """``cfg.envs`` workers, each with its own copy of the search's environment."""
    fn = functools.partial(_worker_env, spec, env_options(spec, cfg, device), worker_threads(cfg.envs, cfg.threads),
                           latency)
    return SubprocVecEnv([fn] * cfg.envs)


def close_workers(vec: SubprocVecEnv) -> None:
    """Stop the workers. After a worker died (or mid-step) SB3's ``close`` would wait for
    answers that never come, so then each live worker is asked to stop, and terminated if
    it does not."""
    if not vec.waiting and all(p.is_alive() for p in vec.processes):
        try:
            vec.close()
            return
        except (BrokenPipeError, EOFError, ConnectionResetError):
            pass
    for remote in vec.remotes:
        try:
            remote.send(("close", None))
        except (BrokenPipeError, EOFError, ConnectionResetError, OSError):
            pass
    for process in vec.processes:
        process.join(timeout=5)
        if process.is_alive():
            process.terminate()
    vec.closed = True


def run_random_rounds(vec: SubprocVecEnv, env: ChannelPruningEnv, log: Any, episodes: int, seed: int,
                      state: Any | None = None, resumed: bool = False,
                      should_stop: Callable[[], bool] | None = None) -> None:
    """The random-search baseline in rounds of ``vec.num_envs`` episodes.

    The actions come from ``env.action_space`` (the main process's environment), drawn
    episode after episode as :func:`agents.search.run_random` draws them, so the episodes are
    the same as with one environment. ``state.boundary()`` runs after each round.
    """
    n, layers = vec.num_envs, env.num_layers
    if not resumed:
        env.action_space.seed(seed)
        env.reset(seed=seed)
        if state is not None:
            state.boundary()
    vec.reset()
    while log.episodes < episodes:
        actions = np.array([[env.action_space.sample() for _ in range(layers)] for _ in range(n)])
        for t in range(layers):
            if should_stop is not None and should_stop():
                return  # the round is dropped; a resumed search draws it again from the saved generator
            _, _, dones, infos = vec.step(actions[:, t])
        assert all(dones), "the episodes of a round end together"
        for info in infos:
            log.on_episode(info)
        if state is not None:
            state.boundary()

"""Benchmarks of the pruning engine (speed and quality), measured side by side in one run."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np
import torch

from amc.pruner import ChannelPruner
from amc.train import evaluate


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def random_policy_counts(pruner: ChannelPruner, rng: np.random.Generator, target: float,
                         lbound: float = 0.2, channel_round: int = 1) -> list[int]:
    """A random policy *at* the target: random ratios in [lbound, 1], scaled by bisection
    until the FLOPs are as close under ``target`` as they get."""
    raw = rng.uniform(lbound, 1.0, pruner.num_layers)

    def counts(scale: float) -> list[int]:
        return pruner.counts_from_ratios(np.clip(raw * scale, lbound, 1.0).tolist(), channel_round)

    lo, hi = 0.0, 1.0 / raw.min()
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if pruner.flops(counts(mid)) <= target * pruner.flops.full else (lo, mid)
    return counts(lo) if lo > 0 else pruner.uniform_counts(target, channel_round)


def bench_prune(pruner: ChannelPruner, model: torch.nn.Module, reward_set, trials: int = 7, target: float = 0.5,
                seed: int = 0, progress: Callable[[str], None] | None = None) -> dict:
    """(a) unpruned reward-set evaluation vs (b) apply random policy + reconstruct + evaluate.

    The two are interleaved, so machine noise hits both; medians are reported.
    """
    rng = np.random.default_rng(seed)
    evaluate(model, reward_set)  # warm-up: first calls pay for allocator and kernel selection
    base_times, episode_times, build_times, eval_times, ratios = [], [], [], [], []
    for i in range(trials):
        ta, _ = _timed(lambda: evaluate(model, reward_set))
        counts = random_policy_counts(pruner, rng, target)
        tb0 = time.perf_counter()
        tbuild, slim = _timed(lambda: pruner.prune(counts, reconstruct=pruner.cache is not None))
        teval, _ = _timed(lambda: evaluate(slim, reward_set))
        tb = time.perf_counter() - tb0
        base_times.append(ta)
        episode_times.append(tb)
        build_times.append(tbuild)
        eval_times.append(teval)
        ratios.append(pruner.flops(counts) / pruner.flops.full)
        if progress:
            progress(f"trial {i + 1}/{trials}: unpruned eval {ta:.3f}s, episode {tb:.3f}s "
                     f"(prune+reconstruct {tbuild:.3f}s), FLOPs ratio {ratios[-1]:.3f}")
    a, b = statistics.median(base_times), statistics.median(episode_times)
    return {"trials": trials, "reward_set_size": len(reward_set), "target": target,
            "unpruned_eval_s": a, "episode_s": b, "ratio_b_over_a": b / a,
            "episode_prune_reconstruct_s": statistics.median(build_times),
            "episode_eval_s": statistics.median(eval_times), "mean_flops_ratio": float(np.mean(ratios)),
            "threads": torch.get_num_threads()}


def uniform_quality(pruner: ChannelPruner, model: torch.nn.Module, reward_set, target: float = 0.5) -> dict:
    """Reward-set top-1 of the uniform policy at ``target`` FLOPs, with and without reconstruction."""
    counts = pruner.uniform_counts(target)
    out = {"base_reward_top1": evaluate(model, reward_set), "uniform_flops_ratio": pruner.flops(counts) / pruner.flops.full,
           "uniform_no_reconstruct_reward_top1": evaluate(pruner.prune(counts, reconstruct=False), reward_set)}
    if pruner.cache is not None:
        out["uniform_reconstruct_reward_top1"] = evaluate(pruner.prune(counts, reconstruct=True), reward_set)
    return out

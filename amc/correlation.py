"""Which score of an un-fine-tuned pruned model predicts its accuracy after fine-tuning?

AMC ranks policies by one reward-set evaluation of the pruned, reconstructed model. EagleEye
(Li et al., ECCV 2020) found such scores rank policies poorly once BatchNorm statistics are
stale, and that re-estimating them on a few training batches ("adaptive BN") helps. This
module measures it for our own pipeline: random policies at the budget (with the lower wall,
so each uses the whole budget) plus uniform, each scored several ways, then each fine-tuned
with the same short budget, and the rank correlation of every score with the fine-tuned
reward-set accuracy. The test set is not read.
"""
from __future__ import annotations

import copy
import math
import sys
from typing import Any, Sequence

import numpy as np
import torch

from amc.bn_recal import recalibrate_bn
from amc.checkpoint import atomic_write_png
from amc.data import DataSplits
from amc.errors import AmcError
from amc.problem import Problem
from amc.train import TrainConfig, evaluate, train


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank (what Spearman's rho needs)."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="mergesort")
    r = np.empty(len(v))
    r[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        tied = v == value
        r[tied] = r[tied].mean()
    return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (nan when either side is constant)."""
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties on either side counted as neither concordant nor discordant)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    dx, dy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(len(x), 1)
    dx, dy = dx[iu], dy[iu]
    denom = math.sqrt(float((dx != 0).sum()) * float((dy != 0).sum()))
    return float((dx * dy).sum() / denom) if denom else math.nan


def random_policies(problem: Problem, n: int, seed: int) -> list[list[int]]:
    """``n`` random policies that end at the budget (uniform actions through both walls)."""
    spec, rng = problem.spec, np.random.default_rng(seed)
    out = []
    for _ in range(n):
        state = problem.pruner.state(spec.target, spec.lbound, spec.channel_round, spec.budget, fill=True)
        while not state.done:
            state.step(spec.lbound + (1.0 - spec.lbound) * float(rng.uniform()))
        out.append(list(state.counts))
    return out


def correlation_bench(problem: Problem, policies: int = 30, ft_epochs: int = 1, ft_images: int = 15000,
                      bn_counts: Sequence[int] = (1, 5, 20), ft_lr: float = 0.01, seed: int = 0,
                      device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """Score ``policies`` random policies and uniform several ways, fine-tune each, correlate.

    Scores: ``reward`` (reconstructed, as the search scores today), ``bn{N}`` (reconstructed,
    then adaptive BN on N calibration batches of ``calib_batch_size`` images) and
    ``no_reconstruct``. Each policy's reconstructed model is fine-tuned for ``ft_epochs`` on
    the same ``ft_images`` training images (the reward set is never trained on) with
    ``amc finetune``'s loop, and its best reward-set top-1 is the target the scores predict.
    """
    spec, pruner, splits = problem.spec, problem.pruner, problem.splits
    if policies < 2 or ft_epochs < 1 or ft_images < 1 or any(n < 1 for n in bn_counts):
        raise AmcError("need at least 2 policies, 1 fine-tuning epoch, 1 image and bn counts >= 1")
    if pruner.cache is None:
        raise AmcError("the correlation bench scores reconstructed models: drop --no-reconstruct")
    dev = torch.device(device)
    idx = torch.from_numpy(np.random.default_rng(seed).permutation(len(splits.train))[:ft_images])
    ft_splits = DataSplits(splits.info, splits.train.subset(idx), splits.reward, splits.test, splits.record)
    bn = {n: splits.bn_batches(n, spec.calib_batch_size, spec.seed) for n in bn_counts}
    plans = [("uniform", pruner.uniform_counts(spec.target, spec.channel_round))]
    plans += [(f"random{i}", c) for i, c in enumerate(random_policies(problem, policies, seed))]
    rows = []
    for k, (name, counts) in enumerate(plans):
        slim = pruner.prune(counts, reconstruct=True)
        row: dict[str, Any] = {"name": name, "counts": counts, "flops_ratio": pruner.flops(counts) / pruner.flops.full,
                               "reward": evaluate(slim, splits.reward, dev),
                               "no_reconstruct": evaluate(pruner.prune(counts, reconstruct=False), splits.reward, dev)}
        for n, batches in bn.items():
            recal = copy.deepcopy(slim)
            recalibrate_bn(recal, batches)
            row[f"bn{n}"] = evaluate(recal, splits.reward, dev)
        cfg = TrainConfig(epochs=ft_epochs, lr=ft_lr, seed=seed, device=str(dev))
        row["finetuned"] = train(slim, ft_splits, cfg, progress=False)["reward_top1"]
        rows.append(row)
        if progress:
            print(f"[{k + 1}/{len(plans)}] {name}: FLOPs {row['flops_ratio']:.3f}, score {row['reward']:.2f}%, "
                  f"fine-tuned {row['finetuned']:.2f}%", file=sys.stderr)
    scores = ["reward", *[f"bn{n}" for n in bn_counts], "no_reconstruct"]
    target = [r["finetuned"] for r in rows]
    table = {s: {"spearman": spearman([r[s] for r in rows], target), "kendall": kendall([r[s] for r in rows], target)}
             for s in scores}
    return {"policies": len(rows), "ft_epochs": ft_epochs, "ft_images": int(len(idx)), "ft_lr": ft_lr,
            "bn_batch_size": spec.calib_batch_size, "seed": seed, "scores": scores, "correlation": table,
            "best_score": max(scores, key=lambda s: -2 if math.isnan(table[s]["spearman"]) else table[s]["spearman"]),
            "uniform_rank_after_ft": int(ranks([-t for t in target])[0]), "rows": rows}


def plot_correlation(result: dict[str, Any], path: str) -> None:
    """One scatter per score: the score against the fine-tuned reward-set top-1, rho in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores, rows = result["scores"], result["rows"]
    fig, axes = plt.subplots(1, len(scores), figsize=(3.2 * len(scores), 3.2), squeeze=False)
    target = [r["finetuned"] for r in rows]
    for ax, s in zip(axes[0], scores):
        ax.scatter([r[s] for r in rows[1:]], target[1:], s=14, label="random")
        ax.scatter([rows[0][s]], [target[0]], s=40, marker="*", color="red", label="uniform")
        c = result["correlation"][s]
        ax.set_title(f"{s}\nrho {c['spearman']:.2f}, tau {c['kendall']:.2f}", fontsize=9)
        ax.set_xlabel("score: reward-set top-1 (%)", fontsize=8)
    axes[0][0].set_ylabel("after fine-tuning: reward-set top-1 (%)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write_png(path, fig, dpi=110)
    plt.close(fig)

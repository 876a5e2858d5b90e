"""Is one policy more accurate than another after fine-tuning? Groups of fine-tunes, compared.

One fine-tune of each of two slim models differs by about as much as the models do (0.1-0.3
points on Fashion-MNIST), so the README compares groups: each policy pruned once and fine-tuned
with several seeds (``amc finetune --seed N``). :func:`compare_groups` reads each folder's
``model.json`` and reports, per group, the mean and standard deviation of test and reward-set
top-1, and for every group after the first, the first group's mean minus its mean with a
percentile bootstrap 95% interval (each group resampled with replacement, independently), and
the differences pair by pair where both groups hold a fine-tune of the same seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from amc.checkpoint import read_json
from amc.errors import AmcError
from amc.frontier import architecture_key
from amc.pruned import kept_channels

SETS = ("test", "reward")
"""The two scores compared: ``test_top1`` (the headline) and ``reward_top1`` (the set that chose the epoch)."""


@dataclass(frozen=True)
class FineTune:
    """One checkpoint's scores, from its ``model.json``."""
    folder: str
    test: float
    reward: float
    seed: int | None
    flops: int | None
    params: int | None
    architecture: tuple = ()
    """:func:`amc.frontier.architecture_key` of the checkpoint."""


def read_finetune(folder: str | Path) -> FineTune:
    """The scores of a checkpoint folder (any with test and reward-set top-1: finetune, prune, export)."""
    if not Path(folder).is_dir():
        raise AmcError(f"{folder} is not a checkpoint folder (amc prune, finetune or export writes one)")
    meta = read_json(Path(folder) / "model.json")
    missing = [k for k in ("test_top1", "reward_top1") if not isinstance(meta.get(k), (int, float))]
    if missing:
        raise AmcError(f"{folder}: model.json has no {' or '.join(missing)}; is it a checkpoint of amc prune, "
                       "finetune or export?")
    seed = ((meta.get("finetune") or {}).get("config") or {}).get("seed")
    arch = architecture_key({"kind": meta.get("kind"), "kept": kept_channels(meta), "flops": meta.get("flops"),
                             "params": meta.get("params")})
    return FineTune(str(folder), float(meta["test_top1"]), float(meta["reward_top1"]),
                    seed if isinstance(seed, int) else None, meta.get("flops"), meta.get("params"), arch)


def bootstrap_interval(a: Sequence[float], b: Sequence[float], resamples: int = 20000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(a) - mean(b)``, the two samples resampled independently."""
    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    da = xa[rng.integers(0, len(xa), (resamples, len(xa)))].mean(axis=1)
    db = xb[rng.integers(0, len(xb), (resamples, len(xb)))].mean(axis=1)
    lo, hi = np.quantile(da - db, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _summary(values: Sequence[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "values": list(values)}


def compare_groups(groups: Sequence[Sequence[str | Path]], labels: Sequence[str], resamples: int = 20000,
                   seed: int = 0) -> dict:
    """Each group's scores, and the first group against each other one (see the module's docstring).

    The interval needs two fine-tunes in both groups (with one, resampling cannot show its spread)
    and is ``None`` otherwise. A group whose folders hold different architectures (channels kept,
    MACs or parameters) is allowed, and flagged in ``mixed``: its spread is then not a fine-tune's.
    """
    if len(groups) < 2:
        raise AmcError("give at least two groups to compare (--group DIR ... --group DIR ...)")
    if len(labels) != len(groups):
        raise AmcError(f"--labels gives {len(labels)} names for {len(groups)} groups")
    read = [[read_finetune(f) for f in g] for g in groups]
    out_groups = []
    for label, g in zip(labels, read):
        out_groups.append({"label": label, "n": len(g), "folders": [f.folder for f in g],
                           "seeds": [f.seed for f in g], "flops": g[0].flops, "params": g[0].params,
                           "mixed": len({f.architecture for f in g}) > 1,
                           **{s: _summary([getattr(f, s) for f in g]) for s in SETS}})
    first = read[0]
    diffs = []
    for label, g in zip(labels[1:], read[1:]):
        d: dict = {"a": labels[0], "b": label}
        for s in SETS:
            a, b = [getattr(f, s) for f in first], [getattr(f, s) for f in g]
            ok = len(a) > 1 and len(b) > 1
            d[s] = {"mean": float(np.mean(a) - np.mean(b)),
                    "interval": bootstrap_interval(a, b, resamples, seed) if ok else None}
        by_seed = {f.seed: f for f in g if f.seed is not None}
        pairs = [(f.seed, f.test - by_seed[f.seed].test, f.reward - by_seed[f.seed].reward)
                 for f in first if f.seed is not None and f.seed in by_seed]
        d["pairs"] = [{"seed": s, "test": t, "reward": r} for s, t, r in pairs]
        d["ahead_test"] = sum(t > 0 for _, t, _ in pairs)
        diffs.append(d)
    return {"groups": out_groups, "differences": diffs, "resamples": resamples, "seed": seed, "level": 0.95}


def table(result: dict) -> str:
    """The comparison for people: one line per group, one per difference."""
    def ms(x: dict) -> str:
        return f"{x['mean']:.2f}" + (f" ± {x['std']:.2f}" if x["std"] is not None else "")

    w = max(len(g["label"]) for g in result["groups"])
    lines = [f"{'group':<{w}}  {'n':>2}  {'test top-1':>13}  {'reward top-1':>13}"]
    for g in result["groups"]:
        flag = "  (mixed architectures)" if g["mixed"] else ""
        lines.append(f"{g['label']:<{w}}  {g['n']:>2}  {ms(g['test']):>13}  {ms(g['reward']):>13}{flag}")
    for d in result["differences"]:
        parts = []
        for s in SETS:
            iv = d[s]["interval"]
            ci = f" [{iv[0]:+.2f}, {iv[1]:+.2f}]" if iv is not None else " (one fine-tune: no interval)"
            parts.append(f"{s} {d[s]['mean']:+.2f}{ci}")
        pairs = f"; ahead on test in {d['ahead_test']} of {len(d['pairs'])} seed pairs" if d["pairs"] else ""
        lines.append(f"{d['a']} - {d['b']}: " + ", ".join(parts) + pairs)
    lines.append(f"(bootstrap {result['level']:.0%} intervals of the difference of means, "
                 f"{result['resamples']} resamples, seed {result['seed']})")
    return "\n".join(lines)

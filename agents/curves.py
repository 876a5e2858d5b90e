"""Learning curves of searches, side by side: best-so-far and per-episode reward-set top-1.

A *curve* is one setting searched with several seeds: a benchmark folder of ``amc bench
quality`` or ``amc sweep`` gives one curve per algorithm (its ``{algo}-seed{seed}`` run
folders), and a single run folder gives a curve of one seed. Each curve is drawn as its mean
over seeds, with the range over seeds shaded: the best reward-set top-1 found so far, and the
top-1 of each episode (a moving average), which shows how long a search keeps exploring.
Read from each run's ``episodes.jsonl``; nothing is re-evaluated.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from agents.run_folder import read_episodes
from amc.checkpoint import atomic_write_png
from amc.errors import AmcError

_SEED_RUN = re.compile(r"^(?P<algo>[a-z0-9]+)-seed(?P<seed>\d+)$")


def _warmup(run: Path) -> int:
    try:
        cfg = json.loads((run / "config.json").read_text(encoding="utf-8"))["config"]
        return int(cfg.get("warmup", 0)) if cfg.get("algo", "ddpg") != "random" else 0
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def collect(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Curves of ``paths``: each a run folder (one curve) or a benchmark folder (one curve per algorithm).

    Returns ``label -> {"runs": {seed label: episodes}, "warmup": int}``. ``labels`` renames the
    paths (a benchmark folder's curves become ``LABEL/algo``).
    """
    if labels is not None and len(labels) != len(paths):
        raise AmcError(f"--labels needs one label per folder: {len(paths)} folders, {len(labels)} labels")
    curves: dict[str, dict[str, Any]] = {}
    for i, path in enumerate(paths):
        path = Path(path)
        name = labels[i] if labels else path.name
        if (path / "episodes.jsonl").is_file():
            curves.setdefault(name, {"runs": {}, "warmup": _warmup(path)})["runs"][path.name] = read_episodes(path)
            continue
        runs = sorted(p for p in path.iterdir() if p.is_dir() and _SEED_RUN.match(p.name)
                      and (p / "episodes.jsonl").is_file()) if path.is_dir() else []
        if not runs:
            raise AmcError(f"{path} is neither a search run folder (episodes.jsonl) nor a benchmark folder "
                           "({algo}-seed{N} run folders)")
        for run in runs:
            algo = _SEED_RUN.match(run.name)["algo"]
            curve = curves.setdefault(f"{name}/{algo}", {"runs": {}, "warmup": _warmup(run)})
            curve["runs"][run.name] = read_episodes(run)
    for label, curve in curves.items():
        curve["runs"] = {k: v for k, v in curve["runs"].items() if v}
        if not curve["runs"]:
            raise AmcError(f"{label} has no finished episode yet")
    return curves


def _moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """The mean of the last ``window`` values at each point (fewer at the start)."""
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def curve_stats(curve: dict[str, Any], window: int = 20, key: str = "reward_top1") -> dict[str, Any]:
    """Per-episode mean/min/max over seeds of the best-so-far and of the moving average of
    ``key``, cut to the episodes every seed has finished, and where each seed found its best."""
    runs = list(curve["runs"].values())
    n = min(len(r) for r in runs)
    values = np.array([[e[key] for e in r[:n]] for r in runs], dtype=np.float64)
    best = np.maximum.accumulate(values, axis=1)
    moving = np.array([_moving_average(v, window) for v in values])
    best_at = [int(np.argmax(v)) for v in values]
    warmup = int(curve["warmup"])
    return {"episodes": n, "seeds": len(runs), "warmup": warmup, "window": window,
            "best": {"mean": best.mean(0), "min": best.min(0), "max": best.max(0)},
            "moving": {"mean": moving.mean(0), "min": moving.min(0), "max": moving.max(0)},
            "final_best_mean": float(best[:, -1].mean()), "best_episode": best_at,
            "best_in_warmup": sum(e < warmup for e in best_at),
            "last_100_mean": float(values[:, -min(100, n):].mean())}


def plot_curves(stats: dict[str, dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Two panels, one line per curve: best-so-far, and the per-episode moving average."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for i, (label, s) in enumerate(stats.items()):
        x = np.arange(s["episodes"])
        color = f"C{i % 10}"
        for ax, part in zip(axes, ("best", "moving")):
            ax.plot(x, s[part]["mean"], color=color, lw=1.4, label=f"{label} ({s['seeds']} seeds)")
            ax.fill_between(x, s[part]["min"], s[part]["max"], color=color, alpha=0.15, lw=0)
        if s["warmup"]:
            for ax in axes:
                ax.axvline(s["warmup"], color=color, ls=":", lw=0.8)
    lows = [s["best"]["min"][min(s["warmup"], s["episodes"] - 1)] for s in stats.values()]
    highs = [s["best"]["max"][-1] for s in stats.values()]
    axes[0].set_ylim(min(lows) - 0.5, max(highs) + 0.3)
    axes[0].set_title("best reward-set top-1 so far (mean, range over seeds)", fontsize=9)
    window = next(iter(stats.values()))["window"]
    axes[1].set_title(f"reward-set top-1 per episode, moving average of {window} "
                      "(dotted: end of warm-up)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("episode")
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write_png(path, fig, dpi=110)


def summarize_curves(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The JSON-able part of :func:`curve_stats` per curve (no per-episode arrays)."""
    keep = ("episodes", "seeds", "warmup", "window", "final_best_mean", "best_episode", "best_in_warmup",
            "last_100_mean")
    return {label: {k: s[k] for k in keep} for label, s in stats.items()}

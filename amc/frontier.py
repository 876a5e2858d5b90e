"""Accuracy against measured speed: several slim models of one base, as one picture.

``amc eval --checkpoint A B ... --plot PNG`` times every checkpoint and the base side by side
in one run (ratios from separate runs differ by more than the models do on a noisy machine)
and draws each checkpoint's test top-1 against its speedup, one panel per batch size, with
the base at 1x. Points up and to the right are better; a checkpoint beaten on both axes by
another is greyed, so the frontier stands out. Several fine-tunes of one architecture (the same
channels kept in every layer) are drawn as one point, their mean, with bars from the lowest to the
highest of each, and one label: fourteen labels on six architectures could not be read.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from amc.checkpoint import atomic_write_png


def dominated(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each (speedup, top-1) point: is another at least as good on both axes and better on one?"""
    return [any(sx >= x and sy >= y and (sx > x or sy > y) for j, (sx, sy) in enumerate(points) if j != i)
            for i, (x, y) in enumerate(points)]


def architecture_key(r: dict) -> tuple:
    """What two checkpoints share when they are one architecture: the same kind of checkpoint (an
    int8 model runs at another speed than its fp32 source), the same channels kept in every layer,
    and so the same MACs and params. ``r`` has ``kind``, ``kept``, ``flops`` and ``params``."""
    return r.get("kind"), tuple(r.get("kept") or ()), r.get("flops"), r.get("params")


def group_by_architecture(results: Sequence[dict]) -> list[list[dict]]:
    """The results in groups of one architecture (:func:`architecture_key`), in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(architecture_key(r), []).append(r)
    return list(groups.values())


def group_label(group: Sequence[dict]) -> str:
    """One checkpoint's folder name; for several, their common prefix less a trailing run index, and the count."""
    names = [Path(r["checkpoint"]).name for r in group]
    if len(names) == 1:
        return names[0]
    # "latency-0.6-ft0" ... "latency-0.6-ft5" share "latency-0.6-ft": drop the run index's own word
    stem = re.sub(r"[-_.]+[A-Za-z]*$", "", os.path.commonprefix(names)) or names[0]
    return f"{stem} (x{len(names)})"


def label_placements(points: Sequence[tuple[float, float]], widths: Sequence[int]) -> list[tuple[int, int, str]]:
    """Where each point's label goes: ``(dx, dy, ha)``, an offset in points and an alignment.

    Labels near the right edge grow leftwards, so they stay inside the panel; a label that would
    sit on one already placed (close in height and overlapping sideways, in the panel's own
    fractions) goes under its point instead. ``widths`` are the labels' lengths in characters.
    """
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    span = lambda v: (max(v) - min(v)) or 1.0
    norm = [((x - min(xs)) / span(xs), (y - min(ys)) / span(ys)) for x, y in points]
    placed: list[tuple[float, float, float]] = []  # (left, right, height) of labels placed, in fractions
    out: list[tuple[int, int, str]] = [(0, 0, "left")] * len(points)
    for i in sorted(range(len(points)), key=lambda i: -norm[i][1]):  # top down: a clash sends the lower one under
        (u, v), w = norm[i], widths[i]
        left_side = u > 0.7
        lo, hi = (u - 0.014 * w, u) if left_side else (u, u + 0.014 * w)
        dy, top = 3, v + 0.03
        if any(abs(top - h) < 0.06 and lo < r and l < hi for l, r, h in placed):
            dy, top = -10, v - 0.06
        placed.append((lo, hi, top))
        out[i] = (-4 if left_side else 4, dy, "right" if left_side else "left")
    return out


def frontier_png(results: Sequence[dict], path: str | Path, title: str = "") -> None:
    """Test top-1 against speedup of each ``amc eval --checkpoint`` result, as a PNG.

    ``results`` are the per-checkpoint dicts of one run (the same base, timed together): each
    has ``checkpoint``, ``top1``, ``base_top1``, ``batch_sizes`` and ``speedup_b{B}``. Drawn
    with matplotlib's Agg canvas (no display) and written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    batches = list(results[0]["batch_sizes"])
    fig = Figure(figsize=(5.2 * len(batches), 4.4), dpi=110)
    FigureCanvasAgg(fig)
    base_top1 = results[0].get("base_top1")
    groups = group_by_architecture(results)
    for k, b in enumerate(batches):
        ax = fig.add_subplot(1, len(batches), k + 1)
        xs = [[float(r[f"speedup_b{b}"]) for r in g] for g in groups]
        ys = [[float(r["top1"]) for r in g] for g in groups]
        pts = [(sum(x) / len(x), sum(y) / len(y)) for x, y in zip(xs, ys)]
        labels = [group_label(g) for g in groups]
        frame = pts + ([(1.0, base_top1)] if base_top1 is not None else [])  # the base sets the panel's range too
        places = label_placements(frame, [len(t) for t in labels] + [4] * (len(frame) - len(pts)))
        for i, ((x, y), gx, gy, g, grey) in enumerate(zip(pts, xs, ys, groups, dominated(pts))):
            color = "0.65" if grey else f"C{i % 10}"  # one colour per architecture in every panel
            if len(g) > 1:
                ax.errorbar([x], [y], xerr=[[x - min(gx)], [max(gx) - x]], yerr=[[y - min(gy)], [max(gy) - y]],
                            fmt="none", ecolor=color, elinewidth=0.8, capsize=2, zorder=2)
            ax.scatter([x], [y], s=36, zorder=3, color=color)
            dx, dy, ha = places[i]
            ax.annotate(labels[i], (x, y), fontsize=7, xytext=(dx, dy), textcoords="offset points", ha=ha,
                        color="0.45" if grey else "black")
        if base_top1 is not None:
            ax.scatter([1.0], [base_top1], marker="*", s=90, color="black", zorder=3)
            ax.annotate("base", (1.0, base_top1), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_xlabel(f"speedup over the base, batch {b}")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
    r0 = results[0]
    fig.suptitle(f"{title}{r0.get('model')}, {r0.get('runtime')}, {r0.get('threads')} thread(s), "
                 f"median of {r0.get('repeats')} interleaved rounds", fontsize=10)
    fig.tight_layout()
    atomic_write_png(path, fig)

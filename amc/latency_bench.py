"""Predicted vs measured latency: how far to trust a :class:`~amc.latency_table.LatencyModel`.

:func:`predict_vs_measure` draws random policies near a latency budget, plus the uniform
policy at that budget, builds each slim model and times it end to end in the target runtime,
interleaved with the unpruned base (:func:`amc.latency_runtime.end_to_end`, which runs
:func:`amc.latency.interleaved_latency`). It reports, per policy, the predicted and measured
latency and latency ratio (slim over base), and the absolute relative errors. This backs
``amc bench latency``.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import nn

from amc.budget import group_counts, round_channels
from amc.checkpoint import atomic_write_png
from amc.errors import AmcError
from amc.latency import MIN_SAMPLE_MS
from amc.latency_runtime import COPIES, OrtModule, end_to_end, prime_allocator, torch_threads
from amc.latency_table import LatencyModel


def uniform_latency_counts(latency: LatencyModel, target: float, channel_round: int = 1) -> list[int]:
    """The largest uniform preserve ratio whose predicted latency is at or under ``target``
    of the base (the smallest uniform model when none is)."""
    groups = latency.graph.groups

    def counts(r: float) -> list[int]:
        return group_counts(max(r, 1e-9), groups, channel_round)

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if latency(counts(mid)) <= target * latency.full else (lo, mid)
    return counts(lo)


def random_latency_policies(latency: LatencyModel, n: int, target: float = 0.5, spread: float = 0.1,
                            lbound: float = 0.2, channel_round: int = 1, seed: int = 0) -> list[list[int]]:
    """``n`` random policies, each as close under its own target as bisection gets.

    Each policy draws a target uniformly in ``target +- spread`` (so the points spread over a
    range of ratios; shifted up to start at the smallest reachable ratio where ``target`` is
    below it) and random ratios in ``[lbound, 1]``, then scales the ratios until its predicted
    latency ratio is just at or under that target.
    """
    rng = np.random.default_rng(seed)
    groups = latency.graph.groups
    # targets below the smallest model would all collapse onto it: spread above it instead
    lowest = latency.predicted_ratio(group_counts(lbound, groups, channel_round))
    t_lo = min(1.0, max(lowest, target - spread))
    t_hi = min(1.0, max(target + spread, t_lo + 2 * spread))
    out = []
    for _ in range(n):
        want = float(rng.uniform(t_lo, t_hi))
        raw = rng.uniform(lbound, 1.0, len(groups))

        def counts(scale: float) -> list[int]:
            return group_counts(np.clip(raw * scale, lbound, 1.0), groups, channel_round)

        lo, hi = 0.0, 1.0 / raw.min()
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if latency(counts(mid)) <= want * latency.full else (lo, mid)
        out.append(counts(lo))
    return out


def uniform_ladder(groups: Sequence[Any], channel_round: int = 1, lbound: float = 0.2,
                   steps: int = 161) -> list[tuple[float, list[int]]]:
    """Every distinct uniform model between ``lbound`` and full width at ``channel_round``.

    At a coarse rounding few uniform models exist (plain20 at round 8 has a handful), so a
    baseline "uniform at the same measured latency" has to be picked among them by measuring
    each. Returns ``(preserve ratio, counts)`` pairs, smallest ratio first; the ratio is the
    smallest one on the grid that gives those counts.
    """
    seen: dict[tuple[int, ...], float] = {}
    for r in np.linspace(lbound, 1.0, steps):
        c = tuple(group_counts(float(r), groups, channel_round))
        seen.setdefault(c, float(r))
    return [(r, list(c)) for c, r in seen.items()]


def nearest_uniform(pruner: Any, rows: Sequence[dict], runtime: str, batch: int, threads: int,
                    label: str = "policy", prefix: str = "uniform-", candidates: int = 3, repeats: int = 20,
                    warmup: int = 3, base: nn.Module | None = None) -> dict | None:
    """The uniform model whose measured latency is nearest that of the row labelled ``label``,
    decided in a run-off.

    :func:`measure_policies` times each ladder model once, against its own base timing, and
    one timing can be far off on a busy machine (one model measured 0.58 and 0.40 of the base
    in one run). So the ``candidates`` nearest by those timings are timed again with the
    policy, all interleaved with the base in one run, and the pick is made there.

    Returns the picked row with ``measured_ratio`` from the run-off, plus ``"runoff"``: each
    model's ratio to the base in that run (the policy's under ``label``); None when ``rows``
    lack the policy or any uniform model.
    """
    target = next((r for r in rows if r["policy"] == label), None)
    pool = [r for r in rows if r["policy"].startswith(prefix)]
    if target is None or not pool:
        return None
    pool = sorted(pool, key=lambda r: abs(r["measured_ratio"] - target["measured_ratio"]))[:max(1, candidates)]
    base_ms, ms = time_together(pruner, [(label, target["counts"])] + [(r["policy"], r["counts"]) for r in pool],
                                runtime, batch, threads, repeats, warmup, base)
    ratios = {n: t / base_ms for n, t in ms.items()}
    pick = min(pool, key=lambda r: abs(ratios[r["policy"]] - ratios[label]))
    return {**pick, "measured_ratio": ratios[pick["policy"]], "runoff": ratios}


def time_together(pruner: Any, plans: Sequence[tuple[str, Sequence[int]]], runtime: str, batch: int, threads: int,
                  repeats: int = 20, warmup: int = 3, base: nn.Module | None = None) -> tuple[float, dict[str, float]]:
    """Every ``(label, counts)`` slim model and the base timed end to end in one run,
    interleaved (so machine drift does not reorder them): the base's median ms, and each
    label's. Built without reconstruction: weights do not change the speed."""
    models = {"base": pruner.model if base is None else base,
              **{label: pruner.prune(list(counts), reconstruct=False) for label, counts in plans}}
    timed = end_to_end(models, tuple(pruner.input_shape), batch, runtime, threads, repeats, warmup)
    return timed["base"].median_ms, {label: timed[label].median_ms for label, _ in plans}


def _summary(errs: Sequence[float]) -> tuple[float, float, float]:
    e = np.asarray(errs, dtype=np.float64)
    return float(np.median(e)), float(np.percentile(e, 90)), float(e.max())


def measure_policies(pruner: Any, latency: LatencyModel, plans: Sequence[tuple[str, Sequence[int]]],
                     runtime: str, batch: int, threads: int, repeats: int = 10, warmup: int = 3,
                     base: nn.Module | None = None, progress: bool = False,
                     copies: int = COPIES) -> tuple[list[dict], list[float]]:
    """Time each ``(label, counts)`` slim model end to end, interleaved with the base, in the
    target runtime, each as ``copies`` independent copies (:func:`amc.latency_runtime.end_to_end`);
    returns a row per policy (predicted and measured ms and ratio, FLOPs ratio, errors) and the
    base's median of each pair."""
    from tqdm import tqdm

    base = pruner.model if base is None else base
    input_shape = tuple(pruner.input_shape)
    rows, base_ms = [], []
    prime_allocator()
    with tempfile.TemporaryDirectory(prefix="amc-bench-") as tmp, torch_threads(threads):
        # exported once: the base is the same model in every interleaved pair
        timed_base = OrtModule(base, input_shape, batch, threads, Path(tmp)) if runtime == "ort" else base
        for label, counts in tqdm(plans, disable=not progress, desc="timing policies", unit="policy", leave=False):
            slim = pruner.prune(counts, reconstruct=False)  # weights do not change the speed
            res = end_to_end({"base": timed_base, "slim": slim}, input_shape, batch, runtime, threads, repeats,
                             warmup, Path(tmp), copies=copies)
            b, s = res["base"].median_ms, res["slim"].median_ms
            base_ms.append(b)
            pred_ms, pred_ratio = latency(counts), latency.predicted_ratio(counts)
            rows.append({"policy": label, "counts": list(counts), "predicted_ms": pred_ms, "measured_ms": s,
                         "predicted_ratio": pred_ratio, "measured_ratio": s / b,
                         "flops_ratio": pruner.flops(counts) / pruner.flops.full,
                         "abs_rel_err": abs(pred_ms - s) / s, "ratio_abs_rel_err": abs(pred_ratio - s / b) / (s / b)})
    return rows, base_ms


def predict_vs_measure(pruner: Any, latency: LatencyModel, policies: int = 20, target: float = 0.5,
                       spread: float = 0.1, lbound: float = 0.2, channel_round: int | None = None,
                       runtime: str | None = None, batch: int | None = None, threads: int | None = None,
                       repeats: int = 10, warmup: int = 3, seed: int = 0, base: nn.Module | None = None,
                       progress: bool = False, plot: str | Path | None = None,
                       extra: Sequence[tuple[str, Sequence[int]]] = ()) -> dict:
    """Compare the latency model's predictions with end-to-end measurements.

    Args:
        pruner: a :class:`amc.pruner.ChannelPruner` (or anything with ``prune(counts,
            reconstruct=False)``, ``graph``, ``flops`` and ``input_shape``) of the model the
            latency model was built for.
        latency: the latency model.
        policies: random policies, besides the uniform one.
        target, spread: the policies' predicted latency ratios lie near ``target +- spread``.
        lbound: the smallest preserve ratio a random policy uses.
        channel_round: the policies' rounding (default: the one the table was built with).
        runtime, batch, threads: the target (default: those the table was built for).
        repeats, warmup: interleaved timing rounds per policy.
        seed: seed of the random policies.
        base: the unpruned model (default: ``pruner.model``).
        progress: show a tqdm bar over the policies.
        plot: write a predicted-vs-measured scatter PNG here.
        extra: more ``(label, counts)`` policies to time, after the random ones (a searched
            policy, a uniform ladder from :func:`uniform_ladder`).

    Returns:
        ``{"runtime", "batch", "threads", "min_sample_ms", "copies", "target", "channel_round", "fingerprint_id",
        "base_predicted_ms", "base_measured_ms", "policies": [{"policy", "counts",
        "predicted_ms", "measured_ms", "predicted_ratio", "measured_ratio", "flops_ratio",
        "abs_rel_err", "ratio_abs_rel_err"}], "median_abs_rel_err", "p90_abs_rel_err",
        "max_abs_rel_err", "ratio_median_abs_rel_err", "ratio_p90_abs_rel_err",
        "ratio_max_abs_rel_err", "plot"}``. ``abs_rel_err`` compares latencies in ms,
        ``|predicted - measured| / measured``; ``ratio_abs_rel_err`` compares the slim/base
        ratios, which machine drift since the table was built does not affect.
    """

    meta = latency.meta
    runtime = runtime or meta.get("runtime")
    batch = batch or meta.get("batch")
    threads = threads or meta.get("threads")
    if runtime is None or batch is None or threads is None:
        raise AmcError("predict_vs_measure needs the runtime, batch and threads (the latency model does not say)")
    channel_round = channel_round or meta.get("channel_round") or 1
    if policies < 0 or not (math.isfinite(target) and 0 < target <= 1):
        raise AmcError(f"need policies >= 0 and a target in (0, 1], got {policies} and {target}")
    plans = [("uniform", uniform_latency_counts(latency, target, channel_round))]
    plans += [(f"random-{i}", c) for i, c in enumerate(
        random_latency_policies(latency, policies, target, spread, lbound, channel_round, seed))]
    plans += [(label, list(c)) for label, c in extra]
    rows, base_ms = measure_policies(pruner, latency, plans, runtime, batch, threads, repeats, warmup, base, progress)
    med, p90, worst = _summary([r["abs_rel_err"] for r in rows])
    rmed, rp90, rworst = _summary([r["ratio_abs_rel_err"] for r in rows])
    out = {"runtime": runtime, "batch": batch, "threads": threads, "min_sample_ms": MIN_SAMPLE_MS, "copies": COPIES,
           "target": target,
           "channel_round": channel_round,
           "fingerprint_id": meta.get("fingerprint_id"), "base_predicted_ms": latency.full,
           "base_measured_ms": float(np.median(base_ms)), "policies": rows, "median_abs_rel_err": med,
           "p90_abs_rel_err": p90, "max_abs_rel_err": worst, "ratio_median_abs_rel_err": rmed,
           "ratio_p90_abs_rel_err": rp90, "ratio_max_abs_rel_err": rworst, "plot": None}
    if plot is not None:
        scatter_png(out, plot)
        out["plot"] = str(plot)
    return out


def per_group_savings(pruner: Any, latency: LatencyModel, ratio: float = 0.5, channel_round: int | None = None,
                      repeats: int = 20, warmup: int = 3, base: nn.Module | None = None) -> dict:
    """Where does the table misprice? Each group cut alone to ``ratio`` (every other group
    full), all timed with the base in one interleaved run in the table's runtime: the share of
    the base's latency each cut saves, measured and predicted.

    A whole-model error says how far off a prediction is; this says which layers it comes
    from (a group whose measured saving is far above its predicted one is priced too cheaply).
    All ``(groups + 1) x COPIES`` models are held in memory at once: meant for small nets.

    Returns:
        ``{"ratio", "groups": [{"group", "layer", "channels", "kept", "residual",
        "measured_saving", "predicted_saving"}], "correlation", "measured_sum",
        "predicted_sum", "base_measured_ms"}``; savings are shares of the base's latency.
    """
    meta = latency.meta
    runtime, batch, threads = meta.get("runtime"), meta.get("batch"), meta.get("threads")
    if runtime is None or batch is None or threads is None:
        raise AmcError("per_group_savings needs a latency model that records its runtime, batch and threads")
    if not (math.isfinite(ratio) and 0 < ratio < 1):
        raise AmcError(f"ratio must be in (0, 1), got {ratio}")
    channel_round = channel_round or meta.get("channel_round") or 1
    groups = latency.graph.groups
    full = [g.channels for g in groups]
    plans = []
    for i, g in enumerate(groups):
        counts = list(full)
        counts[i] = round_channels(ratio, g.channels, g.step(channel_round))
        plans.append(counts)
    models = {"base": pruner.model if base is None else base,
              **{f"group-{i}": pruner.prune(c, reconstruct=False) for i, c in enumerate(plans)}}
    timed = end_to_end(models, tuple(pruner.input_shape), batch, runtime, threads, repeats, warmup)
    b = timed["base"].median_ms
    rows = [{"group": i, "layer": g.layer, "channels": g.channels, "kept": c[i], "residual": bool(g.residual),
             "measured_saving": 1.0 - timed[f"group-{i}"].median_ms / b,
             "predicted_saving": 1.0 - latency.predicted_ratio(c)} for i, (g, c) in enumerate(zip(groups, plans))]
    m = np.array([r["measured_saving"] for r in rows])
    p = np.array([r["predicted_saving"] for r in rows])
    corr = float(np.corrcoef(m, p)[0, 1]) if len(rows) > 1 and m.std() > 0 and p.std() > 0 else float("nan")
    return {"ratio": ratio, "groups": rows, "correlation": corr, "measured_sum": float(m.sum()),
            "predicted_sum": float(p.sum()), "base_measured_ms": b}


def groups_png(result: dict, path: str | Path, title: str = "") -> None:
    """Bars of :func:`per_group_savings`: measured and predicted saving per group, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = result["groups"]
    fig = Figure(figsize=(max(6.0, 0.32 * len(rows) + 2), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [100 * r["measured_saving"] for r in rows], 0.4, label="measured")
    ax.bar(x + 0.2, [100 * r["predicted_saving"] for r in rows], 0.4, label="predicted")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [str(r["group"]) for r in rows], fontsize=7)
    ax.set_xlabel(f"group cut alone to {result['ratio']:g} of its channels")
    ax.set_ylabel("latency saved (% of the base)")
    ax.set_title(f"{title}correlation {result['correlation']:.2f}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_png(path, fig)


def scatter_png(result: dict, path: str | Path) -> None:
    """Predicted vs measured scatter of a :func:`predict_vs_measure` result, as a PNG.

    Left: latency in ms, with the base; right: ratio to the base. The diagonal is a perfect
    prediction, the dashed lines +-10%. Drawn with matplotlib's Agg canvas (no display, no
    global backend switch) and written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = result["policies"]
    fig = Figure(figsize=(10, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    for ax, key, unit in ((fig.add_subplot(1, 2, 1), "ms", "latency (ms)"),
                          (fig.add_subplot(1, 2, 2), "ratio", "latency ratio (slim / base)")):
        pts = {"random": [(r[f"predicted_{key}"], r[f"measured_{key}"]) for r in rows if r["policy"] != "uniform"],
               "uniform": [(r[f"predicted_{key}"], r[f"measured_{key}"]) for r in rows if r["policy"] == "uniform"]}
        if key == "ms":
            pts["base"] = [(result["base_predicted_ms"], result["base_measured_ms"])]
        allv = [v for p in pts.values() for xy in p for v in xy]
        lo, hi = min(allv) * 0.9, max(allv) * 1.1
        ax.plot([lo, hi], [lo, hi], color="black", lw=1)
        for f in (0.9, 1.1):
            ax.plot([lo, hi], [lo * f, hi * f], color="grey", lw=0.8, ls="--")
        for label, marker in (("random", "o"), ("uniform", "s"), ("base", "*")):
            if pts.get(label):
                xs, ys = zip(*pts[label])
                ax.scatter(xs, ys, marker=marker, s=60 if marker == "*" else 28, label=label, zorder=3)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"predicted {unit}")
        ax.set_ylabel(f"measured {unit}")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{result['runtime']}, batch {result['batch']}, {result['threads']} thread(s): "
                 f"p90 |rel err| {result['p90_abs_rel_err']:.1%} (ms), {result['ratio_p90_abs_rel_err']:.1%} (ratio)",
                 fontsize=10)
    fig.tight_layout()
    atomic_write_png(path, fig)

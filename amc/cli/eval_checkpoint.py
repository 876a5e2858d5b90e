"""``amc eval --checkpoint DIR [DIR ...]``: slim models against their unpruned base, measured in
one run (:func:`amc.slim_eval.evaluate_checkpoints`), printed as a table or JSON; ``--plot``
draws them (:mod:`amc.frontier`).
"""
from __future__ import annotations

import argparse
import sys

from amc.cli.common import emit
from amc.slim_eval import BATCH_SIZES, evaluate_checkpoints


def add_latency_args(p: argparse.ArgumentParser) -> None:
    from amc.latency import MIN_SAMPLE_MS
    from amc.latency_runtime import COPIES
    from amc.options import bounded

    p.add_argument("--repeats", type=bounded(int, "--repeats", 1), default=20,
                   help="with --checkpoint: timed samples per model and batch size, the models' samples "
                        f"alternating; a sample runs its model back to back for at least {MIN_SAMPLE_MS:g} ms and "
                        f"counts the mean per call; each model runs as {COPIES} independent copies (sessions in "
                        "ort), a round counting their median; the median of the rounds is reported (default 20)")
    p.add_argument("--warmup", type=bounded(int, "--warmup", 0), default=5,
                   help="with --checkpoint: untimed runs per model and batch size first (default 5)")
    # its own dest: amc eval --model builds a PruneSpec from the options, whose runtime means the latency target
    p.add_argument("--runtime", dest="timing_runtime", default=None, choices=["torch", "ort"],
                   help="with --checkpoint: what times both models: torch (eager, channels-last) or ort "
                        "(onnxruntime's CPU provider, on each model exported to ONNX) (default torch; ort for "
                        "an amc quantize folder, whose int8 model runs in onnxruntime)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="with --checkpoint: also draw each checkpoint's test top-1 against its speedup, one panel "
                        "per batch size, the base at 1x; fine-tunes of one architecture as one point with bars over "
                        "their range (default none)")
    p.add_argument("--batch-sizes", type=bounded(int, "--batch-sizes", 1), nargs="+", default=list(BATCH_SIZES),
                   help="with --checkpoint: batch sizes timed (default 1 64)")


def run_checkpoint(args: argparse.Namespace) -> int:
    repeats, warmup = getattr(args, "repeats", 20), getattr(args, "warmup", 5)
    checkpoints = args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint]
    results, missing = evaluate_checkpoints(checkpoints, getattr(args, "timing_runtime", None),
                                            getattr(args, "batch_sizes", BATCH_SIZES), repeats, warmup,
                                            args.device, getattr(args, "data_dir", None))
    if missing:
        sys.stderr.write(f"note: {missing}; the base model's top-1 is not reported (its FLOPs, params and "
                         "latency need only the architecture)\n")
    plot = getattr(args, "plot", None)
    if plot:
        from amc.frontier import frontier_png

        frontier_png(results, plot)
    if len(results) == 1:
        emit({**results[0], **({"plot": plot} if plot else {})}, args.json, _table(results[0], missing))
    else:
        r0 = results[0]
        run_keys = ("threads", "latency_device", "runtime", "batch_sizes", "repeats", "warmup", "min_sample_ms",
                    "copies")
        shared = {k: v for k, v in r0.items() if k.startswith("base_") or k in run_keys}
        emit({"checkpoints": results, **shared, "plot": plot}, args.json, _many_table(results, missing))
    return 0


def _table(r: dict, missing: str | None) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}%"

    rows = [("", "pruned", "base", "ratio"),
            ("test top-1", pct(r["top1"]), pct(r["base_top1"]), ""),
            ("MACs", f"{r['flops'] / 1e6:.2f}M", f"{r['base_flops'] / 1e6:.2f}M", f"{r['flops_ratio']:.3f}"),
            ("params", f"{r['params'] / 1e6:.3f}M", f"{r['base_params'] / 1e6:.3f}M", f"{r['params_ratio']:.3f}"),
            ("file", f"{r['file_bytes'] / 1024:.1f} KiB", f"{r['base_file_bytes'] / 1024:.1f} KiB",
             f"{r['file_bytes'] / r['base_file_bytes']:.3f}")]
    for b in r["batch_sizes"]:
        rows.append((f"latency b{b}", f"{r[f'latency_ms_b{b}']:.2f} ms", f"{r[f'base_latency_ms_b{b}']:.2f} ms",
                     f"speedup {r[f'speedup_b{b}']:.2f}x"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"{r['checkpoint']} ({r['kind']}, {r['model']}) on the {r['dataset']} test set"]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
              for row in rows]
    lines.append(f"latency: CPU, {r['runtime']}, {r['threads']} thread{'s' if r['threads'] != 1 else ''}, median of "
                 f"{r['repeats']} runs after {r['warmup']} warm-up runs, base and pruned interleaved")
    if missing:
        lines.append(f"base top-1 n/a: {missing}")
    return "\n".join(lines)


def _many_table(results: list[dict], missing: str | None) -> str:
    r0 = results[0]
    bs = r0["batch_sizes"]
    base = "n/a" if r0["base_top1"] is None else f"{r0['base_top1']:.2f}%"
    lat = ", ".join(f"b{b} {r0[f'base_latency_ms_b{b}']:.2f} ms" for b in bs)
    rows = [("checkpoint", "test top-1", "MACs", "params", *(f"speedup b{b}" for b in bs))]
    for r in results:
        rows.append((r["checkpoint"], f"{r['top1']:.2f}%", f"{r['flops_ratio']:.3f}", f"{r['params_ratio']:.3f}",
                     *(f"{r[f'speedup_b{b}']:.2f}x" for b in bs)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"base {r0['model']} on the {r0['dataset']} test set: top-1 {base}, {r0['base_flops'] / 1e6:.2f}M MACs, "
             f"{r0['base_params'] / 1e6:.3f}M params, {lat}"]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
              for row in rows]
    lines.append(f"MACs and params as shares of the base's. latency: CPU, {r0['runtime']}, {r0['threads']} "
                 f"thread{'s' if r0['threads'] != 1 else ''}, median of {r0['repeats']} runs after {r0['warmup']} "
                 f"warm-up runs, the base and all {len(results)} checkpoints interleaved")
    if missing:
        lines.append(f"base top-1 n/a: {missing}")
    return "\n".join(lines)

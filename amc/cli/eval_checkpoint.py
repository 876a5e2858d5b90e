"""``amc eval --checkpoint DIR [DIR ...]``: slim models against their unpruned base, measured in one run.

Test top-1, FLOPs, params, file size and CPU latency (batch 1 and 64) of each model, and the
speedup. The base model is rebuilt from the checkpoint's model spec and base weights;
latency needs only the architecture, so missing base weights cost the base top-1 alone.
Several checkpoints of one base are timed together, interleaved with that base, so their
speedups compare without the drift between runs (``--plot``: :mod:`amc.frontier`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from amc.cli.common import emit
from amc.errors import AmcError

BATCH_SIZES = (1, 64)


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
                        "per batch size, the base at 1x (default none)")
    p.add_argument("--batch-sizes", type=bounded(int, "--batch-sizes", 1), nargs="+", default=list(BATCH_SIZES),
                   help="with --checkpoint: batch sizes timed (default 1 64)")


def run_checkpoint(args: argparse.Namespace) -> int:
    from amc.checkpoint import load_state_dict, load_weights_into
    from amc.flops import count_macs, count_params
    from amc.latency import MIN_SAMPLE_MS
    from amc.latency_runtime import COPIES, end_to_end
    from amc.models import ModelSpec, build_model
    from amc.pruned import load_recorded_splits
    from amc.quantize import INT8_FILE, ort_top1
    from amc.train import evaluate, resolve_device

    repeats, warmup = getattr(args, "repeats", 20), getattr(args, "warmup", 5)
    if repeats < 1:
        raise AmcError(f"--repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise AmcError(f"--warmup must be >= 0, got {warmup}")
    device = resolve_device(args.device)
    folders = [Path(c) for c in (args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint])]
    if len(set(folders)) < len(folders):
        raise AmcError("a checkpoint is named twice")
    runtime = getattr(args, "timing_runtime", None)
    threads = torch.get_num_threads()
    loaded = [_load(f, runtime, threads) for f in folders]
    # an int8 model runs in onnxruntime, so with one among them every model is timed there
    runtime = runtime or ("ort" if any(q for *_, q in loaded) else "torch")
    meta0 = loaded[0][0]
    for folder, (meta, *_) in zip(folders[1:], loaded[1:]):
        if _base_key(meta) != _base_key(meta0):
            raise AmcError(f"{folder} was pruned from another base model than {folders[0]} (model, input shape "
                           "or base weights differ): amc eval times several checkpoints against one base")
    shape = tuple(int(d) for d in meta0["input_shape"])

    base = build_model(ModelSpec.from_dict(meta0["model"]))
    base_record = meta0.get("base") if isinstance(meta0.get("base"), dict) else {}
    weights = base_record.get("weights")
    missing = None
    if not weights:
        missing = f"{folders[0] / 'model.json'} records no base weights"
    elif not Path(weights).is_file():
        missing = f"the base weights {weights} are missing"
    else:
        load_weights_into(base, load_state_dict(weights), source=f"base weights {Path(weights).name}")
    if missing:
        sys.stderr.write(f"note: {missing}; the base model's top-1 is not reported (its FLOPs, params and "
                         "latency need only the architecture)\n")

    tops, dataset = [], None
    for folder, (meta, model, _, _, quantized) in zip(folders, loaded):
        splits = load_recorded_splits(meta, getattr(args, "data_dir", None))
        dataset = splits if dataset is None else dataset
        tops.append(ort_top1(folder / INT8_FILE, splits.test, threads)[0] if quantized
                    else evaluate(model.to(device), splits.test, device))
    base_top1 = None if missing else evaluate(base.to(device), dataset.test, device)

    batch_sizes = list(getattr(args, "batch_sizes", BATCH_SIZES))
    names = [f"pruned{i}" for i in range(len(folders))]
    # each batch size timed side by side in the runtime, every checkpoint with the one base, after
    # priming the allocator (amc.latency_runtime)
    per_batch = {b: end_to_end({"base": base, **{n: m for n, (_, m, *_) in zip(names, loaded)}}, shape, b,
                               runtime, threads, repeats, warmup) for b in batch_sizes}
    base_info = {"base_top1": base_top1, "base_weights": weights, "base_weights_missing": missing is not None,
                 "base_flops": count_macs(base, shape), "base_params": count_params(base),
                 "base_file_bytes": _safetensors_bytes(base)}
    run_info = {"threads": threads, "latency_device": "cpu", "runtime": runtime, "batch_sizes": batch_sizes,
                "repeats": repeats, "warmup": warmup, "min_sample_ms": MIN_SAMPLE_MS, "copies": COPIES}
    results = []
    for folder, name, top1, (meta, _, fp32_slim, file_bytes, _) in zip(folders, names, tops, loaded):
        res: dict[str, Any] = {
            "checkpoint": str(folder), "kind": meta.get("kind"), "model": meta["model"].get("name"),
            "dataset": dataset.info.name, "top1": top1, "flops": count_macs(fp32_slim, shape),
            "params": count_params(fp32_slim), "file_bytes": file_bytes,
        }
        for b in batch_sizes:
            res[f"latency_ms_b{b}"] = per_batch[b][name].median_ms
        res.update(base_info)
        for b in batch_sizes:
            res[f"base_latency_ms_b{b}"] = per_batch[b]["base"].median_ms
        for b in batch_sizes:
            res[f"speedup_b{b}"] = per_batch[b]["base"].median_ms / per_batch[b][name].median_ms
        res.update({"flops_ratio": res["flops"] / res["base_flops"], "params_ratio": res["params"] / res["base_params"],
                    **run_info,
                    "latency_iqr_ms": {f"{n}_b{b}": per_batch[b][key].iqr_ms
                                       for n, key in (("pruned", name), ("base", "base")) for b in batch_sizes}})
        results.append(res)
    plot = getattr(args, "plot", None)
    if plot:
        from amc.frontier import frontier_png

        frontier_png(results, plot)
    if len(results) == 1:
        emit({**results[0], **({"plot": plot} if plot else {})}, args.json, _table(results[0], missing))
    else:
        summary = {"checkpoints": results, **base_info, **run_info, "plot": plot,
                   **{f"base_latency_ms_b{b}": per_batch[b]["base"].median_ms for b in batch_sizes}}
        emit(summary, args.json, _many_table(results, missing))
    return 0


def _load(folder: Path, runtime: str | None, threads: int) -> tuple[dict, Any, torch.nn.Module, int, bool]:
    """``(meta, model to time, fp32 slim model for FLOPs and params, file bytes, quantized)``."""
    from amc.latency_runtime import OrtModule
    from amc.pruned import load_checkpoint, rebuild_architecture
    from amc.quantize import INT8_FILE

    meta = _quantized_meta(folder)
    if meta is not None:  # an amc quantize folder: the int8 ONNX model, run and timed in onnxruntime
        if runtime == "torch":
            raise AmcError(f"{folder} holds an int8 ONNX model, which runs in onnxruntime: use --runtime ort")
        int8 = folder / INT8_FILE
        if not int8.is_file():
            raise AmcError(f"{int8} is missing")
        return meta, OrtModule.from_file(int8, threads), rebuild_architecture(meta), int8.stat().st_size, True
    model, meta = load_checkpoint(folder)
    return meta, model, model, (folder / "model.safetensors").stat().st_size, False


def _base_key(meta: dict) -> str:
    """What must agree for two checkpoints to be timed against one base."""
    import json

    base = meta.get("base") if isinstance(meta.get("base"), dict) else {}
    return json.dumps([meta.get("model"), meta.get("input_shape"), base.get("weights")], sort_keys=True, default=str)


def _quantized_meta(folder: Path) -> dict | None:
    """``model.json`` of an ``amc quantize`` folder, or None for any other folder."""
    from amc.checkpoint import read_json

    if not (folder / "model.json").is_file():
        return None
    meta = read_json(folder / "model.json")
    return meta if isinstance(meta, dict) and meta.get("kind") == "quantized" else None


def _safetensors_bytes(model: torch.nn.Module) -> int:
    """Size of ``model``'s weights in the format of a checkpoint's ``model.safetensors``."""
    from safetensors.torch import save

    return len(save({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}))


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

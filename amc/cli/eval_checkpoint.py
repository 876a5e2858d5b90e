"""``amc eval --checkpoint DIR``: a slim model against its unpruned base, measured in one run.

Test top-1, FLOPs, params, file size and CPU latency (batch 1 and 64) of both models, and
the speedup. The base model is rebuilt from the checkpoint's model spec and base weights;
latency needs only the architecture, so missing base weights cost the base top-1 alone.
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
    p.add_argument("--batch-sizes", type=bounded(int, "--batch-sizes", 1), nargs="+", default=list(BATCH_SIZES),
                   help="with --checkpoint: batch sizes timed (default 1 64)")


def run_checkpoint(args: argparse.Namespace) -> int:
    from amc.checkpoint import load_state_dict, load_weights_into
    from amc.flops import count_macs, count_params
    from amc.latency import MIN_SAMPLE_MS
    from amc.latency_runtime import COPIES, OrtModule, end_to_end
    from amc.models import ModelSpec, build_model
    from amc.pruned import load_checkpoint, load_recorded_splits, rebuild_architecture
    from amc.quantize import INT8_FILE, ort_top1
    from amc.train import evaluate, resolve_device

    repeats, warmup = getattr(args, "repeats", 20), getattr(args, "warmup", 5)
    if repeats < 1:
        raise AmcError(f"--repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise AmcError(f"--warmup must be >= 0, got {warmup}")
    device = resolve_device(args.device)
    folder = Path(args.checkpoint)
    meta = _quantized_meta(folder)
    runtime = getattr(args, "timing_runtime", None)
    quantized = meta is not None
    if quantized:  # an amc quantize folder: the int8 ONNX model, run and timed in onnxruntime
        if runtime == "torch":
            raise AmcError(f"{folder} holds an int8 ONNX model, which runs in onnxruntime: use --runtime ort")
        runtime = "ort"
        int8 = folder / INT8_FILE
        if not int8.is_file():
            raise AmcError(f"{int8} is missing")
        fp32_slim = rebuild_architecture(meta)  # for FLOPs and params
        model = OrtModule.from_file(int8, torch.get_num_threads())
        file_bytes = int8.stat().st_size
    else:
        model, meta = load_checkpoint(folder)
        fp32_slim, file_bytes = model, (folder / "model.safetensors").stat().st_size
    runtime = runtime or "torch"
    shape = tuple(int(d) for d in meta["input_shape"])

    base = build_model(ModelSpec.from_dict(meta["model"]))
    base_record = meta.get("base") if isinstance(meta.get("base"), dict) else {}
    weights = base_record.get("weights")
    missing = None
    if not weights:
        missing = f"{folder / 'model.json'} records no base weights"
    elif not Path(weights).is_file():
        missing = f"the base weights {weights} are missing"
    else:
        load_weights_into(base, load_state_dict(weights), source=f"base weights {Path(weights).name}")
    if missing:
        sys.stderr.write(f"note: {missing}; the base model's top-1 is not reported (its FLOPs, params and "
                         "latency need only the architecture)\n")

    splits = load_recorded_splits(meta, getattr(args, "data_dir", None))
    if quantized:
        top1 = ort_top1(folder / INT8_FILE, splits.test, torch.get_num_threads())[0]
    else:
        top1 = evaluate(model.to(device), splits.test, device)
    base_top1 = None if missing else evaluate(base.to(device), splits.test, device)

    batch_sizes = list(getattr(args, "batch_sizes", BATCH_SIZES))
    threads = torch.get_num_threads()
    # each batch size timed side by side in the runtime, after priming the allocator (amc.latency_runtime)
    per_batch = {b: end_to_end({"pruned": model, "base": base}, shape, b, runtime, threads, repeats, warmup)
                 for b in batch_sizes}
    lat = {name: {b: per_batch[b][name] for b in batch_sizes} for name in ("pruned", "base")}
    res: dict[str, Any] = {
        "checkpoint": str(folder), "kind": meta.get("kind"), "model": meta["model"].get("name"),
        "dataset": splits.info.name, "top1": top1, "flops": count_macs(fp32_slim, shape),
        "params": count_params(fp32_slim), "file_bytes": file_bytes,
    }
    for b in batch_sizes:
        res[f"latency_ms_b{b}"] = lat["pruned"][b].median_ms
    res.update({"base_top1": base_top1, "base_weights": weights, "base_weights_missing": missing is not None,
                "base_flops": count_macs(base, shape), "base_params": count_params(base),
                "base_file_bytes": _safetensors_bytes(base)})
    for b in batch_sizes:
        res[f"base_latency_ms_b{b}"] = lat["base"][b].median_ms
    for b in batch_sizes:
        res[f"speedup_b{b}"] = lat["base"][b].median_ms / lat["pruned"][b].median_ms
    res.update({"flops_ratio": res["flops"] / res["base_flops"], "params_ratio": res["params"] / res["base_params"],
                "threads": threads, "latency_device": "cpu", "runtime": runtime, "batch_sizes": batch_sizes,
                "repeats": repeats, "warmup": warmup, "min_sample_ms": MIN_SAMPLE_MS, "copies": COPIES,
                "latency_iqr_ms": {f"{name}_b{b}": lat[name][b].iqr_ms for name in lat for b in batch_sizes}})
    emit(res, args.json, _table(res, missing))
    return 0


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

"""Slim checkpoints against their unpruned base, measured in one run (``amc eval --checkpoint``).

Test top-1, FLOPs, params, file size and CPU latency of each checkpoint and of the base it was
pruned from, rebuilt from the checkpoint's model spec and base weights (latency needs only the
architecture, so missing base weights cost the base top-1 alone). Several checkpoints of one
base are timed together, interleaved with that base, so their speedups compare without the
drift between runs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from amc.checkpoint import find_base_weights
from amc.errors import AmcError
from amc.pruned import kept_channels

BATCH_SIZES = (1, 64)


def evaluate_checkpoints(checkpoints: Sequence[str | Path], runtime: str | None = None,
                         batch_sizes: Sequence[int] = BATCH_SIZES, repeats: int = 20, warmup: int = 5,
                         device: str = "auto", data_dir: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Each checkpoint against its unpruned base: test top-1, FLOPs, params, file size, and CPU
    latency at each batch size, every model timed in one run, interleaved with the one base.

    ``runtime``: ``torch`` or ``ort`` (None: ``ort`` when an ``amc quantize`` folder is among
    them, else ``torch``). Returns one result dict per checkpoint (the base's figures in each)
    and, where the base weights are missing, why its top-1 is not reported (else None).
    All checkpoints must come from one base (model, input shape and base weights).
    """
    from amc.checkpoint import load_state_dict, load_weights_into
    from amc.flops import count_macs, count_params
    from amc.latency import MIN_SAMPLE_MS
    from amc.latency_runtime import COPIES, end_to_end
    from amc.models import ModelSpec, build_model
    from amc.pruned import load_recorded_splits
    from amc.quantize import INT8_FILE, ort_top1
    from amc.train import evaluate, resolve_device

    if repeats < 1:
        raise AmcError(f"--repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise AmcError(f"--warmup must be >= 0, got {warmup}")
    dev = resolve_device(device)
    folders = [Path(c) for c in checkpoints]
    if not folders:
        raise AmcError("no checkpoint given")
    if len(set(folders)) < len(folders):
        raise AmcError("a checkpoint is named twice")
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
    weights, found = base_record.get("weights"), find_base_weights(base_record)
    missing = None
    if not weights:
        missing = f"{folders[0] / 'model.json'} records no base weights"
    elif found is None:
        missing = f"the base weights {weights} are missing"
    else:
        weights = str(found)
        load_weights_into(base, load_state_dict(found), source=f"base weights {found.name}")

    tops, by_record = [], {}  # checkpoints of one base mostly share a split record: load each once
    for folder, (meta, model, _, _, quantized) in zip(folders, loaded):
        key = json.dumps([meta.get("dataset"), meta.get("split"), meta.get("input_shape")], sort_keys=True,
                         default=str)
        if key not in by_record:
            by_record[key] = load_recorded_splits(meta, data_dir)
        splits = by_record[key]
        tops.append(ort_top1(folder / INT8_FILE, splits.test, threads)[0] if quantized
                    else evaluate(model.to(dev), splits.test, dev))
    dataset = next(iter(by_record.values()))
    base_top1 = None if missing else evaluate(base.to(dev), dataset.test, dev)

    batch_sizes = list(batch_sizes)
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
            "kept": kept_channels(meta),
        }
        ms = {b: (per_batch[b][name].median_ms, per_batch[b]["base"].median_ms) for b in batch_sizes}
        res.update({f"latency_ms_b{b}": slim_ms for b, (slim_ms, _) in ms.items()})
        res.update(base_info)
        res.update({f"base_latency_ms_b{b}": base_ms for b, (_, base_ms) in ms.items()})
        res.update({f"speedup_b{b}": base_ms / slim_ms for b, (slim_ms, base_ms) in ms.items()})
        res.update({"flops_ratio": res["flops"] / res["base_flops"], "params_ratio": res["params"] / res["base_params"],
                    **run_info,
                    "latency_iqr_ms": {f"{n}_b{b}": per_batch[b][key].iqr_ms
                                       for n, key in (("pruned", name), ("base", "base")) for b in batch_sizes}})
        results.append(res)
    return results, missing


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
    base = meta.get("base") if isinstance(meta.get("base"), dict) else {}
    found = find_base_weights(base)
    where = str(found.resolve()) if found else base.get("weights")
    return json.dumps([meta.get("model"), meta.get("input_shape"), where], sort_keys=True, default=str)


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

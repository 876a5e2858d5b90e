"""Which models amc can prune end to end: one check per torchvision classification model.

For each model (built without weights, so nothing is downloaded) :func:`check_model` records:

- the prunable layers (channel groups) the layer graph finds, and what it leaves alone;
- the smallest FLOPs ratio reachable: every group at the lower bound;
- slim/masked parity: at uniform 0.5, the physically slim model's output equals the masked
  model's (the zoo's surgery test, on synthetic input);
- ONNX export of the slim model, checked in onnxruntime (``amc export``'s check);
- the error, in one line, where a step fails.

Models run on synthetic images at the smallest input their torchvision weights declare
(``meta["min_size"]``), at least 32 pixels. The parameter count, also from the weights'
metadata, bounds which models are tried (``max_params``). Each model is checked in a child
process (:func:`check_model_isolated`): one that crashes or hangs is a row, not the end.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from amc.budget import group_counts
from amc.errors import AmcError


def torchvision_models(max_params: int | None = None) -> list[tuple[str, int | None, int]]:
    """``(name, parameters, input size)`` of torchvision's classification models."""
    import torchvision.models as tvm
    from torchvision.models import get_model_weights, list_models

    out = []
    for name in list_models(module=tvm):
        meta: dict[str, Any] = {}
        try:
            meta = get_model_weights(name).DEFAULT.meta
        except Exception:  # a model without registered weights: no metadata, no limit known
            pass
        params = meta.get("num_params")
        size = max(32, *(meta.get("min_size") or (32, 32)))
        if max_params is None or params is None or params <= max_params:
            out.append((name, params, size))
    return out


def _line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if not isinstance(e, AmcError) else text


def check_model(name: str, size: int, lbound: float = 0.2, coupled: str = "skip", seed: int = 0) -> dict[str, Any]:
    """Run the coverage checks on ``tv:NAME`` (or the zoo's ``NAME``) at ``size`` x ``size``; never raises."""
    from amc.export import check_onnx, export_onnx
    from amc.models import ModelSpec, build_model, is_zoo
    from amc.pruner import ChannelPruner

    rec: dict[str, Any] = {"model": name, "input_size": size, "prunable_layers": None, "skipped": None,
                           "min_flops_ratio": None, "parity": None, "onnx": None, "error": None, "stage": None}
    t0 = time.perf_counter()
    stage = "build"
    try:
        torch.manual_seed(seed)
        model = build_model(ModelSpec(name if is_zoo(name) else f"tv:{name}", 3, 10)).eval()
        shape = (3, size, size)
        stage = "graph"
        pruner = ChannelPruner(model, shape, None, coupled=coupled)
        rec["prunable_layers"], rec["skipped"] = pruner.num_layers, len(pruner.graph.skipped)
        lowest = group_counts(lbound, pruner.graph.groups)
        rec["min_flops_ratio"] = pruner.flops(lowest) / pruner.flops.full
        stage = "parity"
        half = group_counts(0.5, pruner.graph.groups)
        slim, masked = pruner.prune(half, reconstruct=False), pruner.masked(half, reconstruct=False)
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            a, b = slim(x), masked(x)
        scale = float(b.abs().max())
        diff = float((a - b).abs().max())
        rec["parity"] = diff <= 1e-4 + 1e-5 * scale
        rec["parity_max_abs_diff"] = diff
        stage = "onnx"
        with tempfile.TemporaryDirectory(prefix="amc-coverage-") as tmp:
            export_onnx(slim, shape, Path(tmp) / "model.onnx", "torchscript")
            rec["onnx"] = bool(check_onnx(Path(tmp) / "model.onnx", slim, shape)["passed"])
        stage = None
    except Exception as e:  # every failure is a row of the table, not a crash of the benchmark
        rec["error"] = _line(e)
    rec["stage"] = stage
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    return rec


def _child(queue: Any, args: tuple) -> None:
    queue.put(check_model(*args))


def check_model_isolated(name: str, size: int, lbound: float = 0.2, coupled: str = "skip",
                         timeout: float = 600.0) -> dict[str, Any]:
    """:func:`check_model` in a child process, so that a model that crashes the interpreter
    (Torch-Pruning's shape inference recursing past the C stack on Swin) or hangs is a row
    of the table too."""
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_child, args=(q, (name, size, lbound, coupled)), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    try:
        rec = q.get(timeout=timeout)
    except queue_mod.Empty:
        rec = None
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if rec is None:
        why = (f"no result within {timeout:g} s" if proc.exitcode in (None, -9) and time.perf_counter() - t0 >= timeout
               else f"the check crashed the process (exit code {proc.exitcode})")
        rec = {"model": name, "input_size": size, "prunable_layers": None, "skipped": None, "min_flops_ratio": None,
               "parity": None, "onnx": None, "error": why, "stage": "graph",
               "seconds": round(time.perf_counter() - t0, 1)}
    return rec


def coverage_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per model."""
    def flag(v: Any) -> str:
        return "-" if v is None else ("yes" if v else "**no**")

    lines = ["| model | params (M) | input | prunable layers | min FLOPs ratio | slim == masked | ONNX | error |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        params = "?" if r.get("params") is None else f"{r['params'] / 1e6:.1f}"
        ratio = "-" if r["min_flops_ratio"] is None else f"{r['min_flops_ratio']:.3f}"
        err = "" if not r["error"] else f"{r['stage']}: {r['error'][:120]}"
        lines.append(f"| {r['model']} | {params} | {r['input_size']} | {r['prunable_layers'] if r['prunable_layers'] is not None else '-'} "
                     f"| {ratio} | {flag(r['parity'])} | {flag(r['onnx'])} | {err} |")
    return "\n".join(lines)

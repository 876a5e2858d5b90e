"""Export a slim model to ONNX and check the file against PyTorch with onnxruntime.

The paper's last step (docs/method.md#the-loop: the best policy becomes a physically slim
model) ends in a file that runs without amc and without torch. The check runs the
ONNX file in onnxruntime at two batch sizes, so the dynamic batch axis is exercised too,
and compares with the PyTorch outputs.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from amc.errors import AmcError

OPSET = 18
"""ONNX opset written (>= 17: LayerNormalization and friends are native ops)."""
ATOL = 1e-4
"""Allowed |onnxruntime - PyTorch| on any logit, for logits of order one."""
RTOL = 1e-5
"""Extra allowance per unit of the largest |logit|: float32 keeps about 7 digits, so logits of
1e5 (an untrained deep net) differ by about 0.1 between two correct runtimes."""
INPUT_NAME, OUTPUT_NAME = "input", "logits"
CHECK_BATCHES = (1, 3)
"""Batch sizes of the check; two of them prove the batch axis is dynamic."""
_EXTERNAL_DATA_BYTES = 1 << 30
"""Above this many parameter bytes the weights go to ``model.onnx.data`` (protobuf caps a file at 2 GiB)."""


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path,
                exporter: str = "dynamo") -> dict:
    """Write ``model`` (eval mode, contiguous memory) to ``path`` with a dynamic batch axis.

    ``exporter`` is ``dynamo`` (torch.export, torch's default) or ``torchscript`` (the legacy
    tracer, about 50x faster on small nets). Returns a record of what was written.
    """
    if exporter not in ("dynamo", "torchscript"):
        raise AmcError(f"unknown ONNX exporter {exporter!r}; choose dynamo or torchscript")
    path = Path(path)
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    # batch 2, not 1: torch.export specialises a dimension of size 1 to a constant
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    nbytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    external = nbytes > _EXTERNAL_DATA_BYTES
    # written under its final name in a temporary folder beside it (an external-data file is
    # found by name, so the pair must keep its names), then moved into place: a failed or
    # interrupted export never leaves a half-written model.onnx
    try:
        tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    except OSError as e:
        raise AmcError(f"cannot write {path}: {e.strerror or e}") from e
    tmp = tmp_dir / path.name
    chatter = io.StringIO()  # the exporters print progress; --json wants stdout to itself
    try:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
                warnings.simplefilter("ignore")
                if exporter == "dynamo":
                    program = torch.onnx.export(
                        model, (x,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                        output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
                    program.save(str(tmp), external_data=external)
                else:
                    torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=OPSET,
                                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        except OSError as e:
            raise AmcError(f"cannot write {path}: {e.strerror or e}") from e
        except Exception as e:  # the exporters raise many types; the user needs one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise AmcError(f"ONNX export ({exporter}) failed: {type(e).__name__}: {first}") from e
        try:
            data = tmp_dir / f"{path.name}.data"
            if data.exists():
                os.replace(data, f"{path}.data")
            os.replace(tmp, path)
        except OSError as e:
            raise AmcError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return {"file": path.name, "exporter": exporter, "opset": OPSET, "input": INPUT_NAME, "output": OUTPUT_NAME,
            "input_shape": ["batch", *[int(d) for d in input_shape]], "external_data": external,
            "bytes": path.stat().st_size}


def check_onnx(path: str | Path, model: nn.Module, input_shape: tuple[int, ...], atol: float = ATOL,
               rtol: float = RTOL, batches: tuple[int, ...] = CHECK_BATCHES, seed: int = 0) -> dict:
    """Run ``path`` in onnxruntime and compare with ``model`` on random inputs.

    The check passes when ``max_abs_diff <= atol + rtol * output_scale``, where
    ``output_scale`` is the largest |logit| PyTorch gave. Returns ``{"max_abs_diff",
    "output_scale", "atol", "rtol", "batches", "passed", "onnxruntime"}``; the caller decides
    what a failure means.
    """
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        raise AmcError(f"checking the export needs onnx and onnxruntime ({e.name} is missing): "
                       "pip install 'amc[export]'") from e
    try:
        onnx.checker.check_model(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnx / onnxruntime raise their own types
        raise AmcError(f"onnxruntime cannot load {path}: {str(e).strip().splitlines()[0]}") from e
    model = model.cpu().eval()
    g = torch.Generator().manual_seed(seed)
    worst = scale = 0.0
    for b in batches:
        x = torch.randn(b, *input_shape, generator=g)
        with torch.inference_mode():
            ref = model(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != ref.shape:
            raise AmcError(f"ONNX output has shape {tuple(got.shape)} at batch {b}, PyTorch {tuple(ref.shape)}")
        diff = float(abs(got.astype("float64") - ref.astype("float64")).max())
        worst = max(worst, diff if math.isfinite(diff) else math.inf)  # NaN must fail, not vanish in max()
        scale = max(scale, float(abs(ref).max()))
    return {"max_abs_diff": worst, "output_scale": scale, "atol": atol, "rtol": rtol, "batches": list(batches),
            "passed": worst <= atol + rtol * scale, "onnxruntime": ort.__version__}

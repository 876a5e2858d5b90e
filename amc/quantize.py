"""Post-training int8 quantization of a model with onnxruntime: the step users take after pruning.

:func:`quantize_model` exports the model to ONNX (as ``amc export`` does), then runs
onnxruntime's static quantization (``quantize_static``) on it: int8 weights (per channel by
default) and int8 activations, whose ranges are calibrated on images of the **calibration
split** (the training split minus the reward set; never reward-set or test images). The
result is a folder:

- ``model.int8.onnx``: the quantized model (QOperator by default: QLinearConv and friends,
  uint8 activations; or QDQ: QuantizeLinear/DequantizeLinear pairs around float ops, which
  onnxruntime fuses into int8 kernels and other execution providers read). QOperator is the
  default because it measured smaller (0.26-0.29 of the fp32 file against 0.31-0.43: no
  DequantizeLinear node per weight) and faster on the CPU we measured (README, "Prune, then
  int8");
- ``model.fp32.onnx``: the float model it was made from, for side-by-side comparison;
- ``model.json``: the source checkpoint's record plus ``quantization`` (format, granularity,
  calibration method, which images calibrated it, package versions) and the measured figures.

onnxruntime's own quantizer does the work; what is ours is the choice of calibration images
and the bookkeeping that lets ``amc eval`` compare the int8 model with the unpruned fp32 base.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from amc.errors import AmcError

INT8_FILE, FP32_FILE = "model.int8.onnx", "model.fp32.onnx"
FORMATS = ("qdq", "qoperator")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
"""onnxruntime's calibrators: minmax (the range seen), entropy (KL-divergence threshold, as
TensorRT), percentile (99.999th percentile of |x|)."""


def int8_dot_instructions() -> list[str]:
    """The CPU's int8 dot-product instruction sets that onnxruntime's int8 kernels use, if any.

    x86: VNNI (``avx512_vnni``, ``avx_vnni``) or AMX (``amx_int8``); Arm: the dot-product
    extension (``asimddp``) or i8mm. Without them an int8 GEMM is emulated with 16-bit
    multiplies and can be slower than float32. Read from ``/proc/cpuinfo`` (Linux); Apple
    silicon always has the Arm dot product.
    """
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return ["asimddp"]
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return [f for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm") if f in flags]


def calibration_images(splits: Any, n_batches: int, batch_size: int, seed: int) -> tuple[list[np.ndarray], dict]:
    """``n_batches`` normalised batches from the calibration split, and a record of which.

    The split's :meth:`~amc.data.DataSplits.calibration_indices` picks positions in
    ``splits.train``, which holds the training split minus the reward set, so no reward-set
    or test image calibrates the quantizer.
    """
    if n_batches < 1 or batch_size < 1:
        raise AmcError(f"calibration needs at least one batch of one image, got {n_batches} x {batch_size}")
    idx = splits.calibration_indices(n_batches, batch_size, seed)
    x = splits.train.normalize(splits.train.images[idx])
    batches = [np.ascontiguousarray(b.numpy(), dtype=np.float32) for b in x.split(batch_size)]
    record = {"split": "calibration (training split minus the reward set)", "images": int(len(idx)),
              "batches": len(batches), "batch_size": batch_size, "seed": seed,
              "train_indices_sha256": hashlib.sha256(np.sort(idx.numpy()).astype(np.int64).tobytes()).hexdigest()}
    return batches, record


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of batches."""

    def __init__(self, batches: Sequence[np.ndarray], input_name: str) -> None:
        self.batches, self.input_name = list(batches), input_name
        self._it: Iterator[np.ndarray] = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self.input_name: x}

    def rewind(self) -> None:
        self._it = iter(self.batches)


def reduce_range_default() -> bool:
    """Whether weights should use 7 bits: yes on a CPU without int8 dot-product instructions.

    There onnxruntime's x86 int8 kernels multiply u8 x s8 pairs into saturating 16-bit sums
    (``vpmaddubsw``), and full-range weights overflow them. Measured on mobilenetv2-0.5 on such
    a CPU (README, "Prune, then int8"): 92.00% test top-1 with 8-bit weights, 93.01% with 7 bits,
    against 93.03% in fp32. With VNNI the sums are 32-bit and the eighth bit is free accuracy.
    """
    return not int8_dot_instructions()


def quantize_onnx(fp32: str | Path, int8: str | Path, batches: Sequence[np.ndarray], fmt: str = "qoperator",
                  per_channel: bool = True, method: str = "minmax", reduce_range: bool = False) -> None:
    """Quantize the ONNX file ``fp32`` into ``int8`` with onnxruntime, calibrated on ``batches``.

    The graph is first pre-processed as onnxruntime recommends (shape inference and graph
    optimisation, so Conv+BN arrive folded); ``int8`` is written whole or not at all.
    ``reduce_range`` quantizes weights to 7 bits (see :func:`reduce_range_default`). QOperator
    models get uint8 activations, as onnxruntime advises for its x86 QLinear kernels (int8 ones
    are slow there); QDQ models int8 (S8S8), its recommended default.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if fmt not in FORMATS:
        raise AmcError(f"unknown quantization format {fmt!r}; choose {' or '.join(FORMATS)}")
    if method not in CALIBRATION_METHODS:
        raise AmcError(f"unknown calibration method {method!r}; choose {', '.join(CALIBRATION_METHODS)}")
    int8 = Path(int8)
    input_name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(dir=int8.parent, prefix=".quantize-") as tmp:
        prep, out = Path(tmp) / "prep.onnx", Path(tmp) / int8.name
        try:
            quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantization works without it
            shutil.copyfile(fp32, prep)
        try:
            quantize_static(str(prep), str(out), _Reader(batches, input_name),
                            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                            per_channel=per_channel, reduce_range=reduce_range,
                            activation_type=QuantType.QInt8 if fmt == "qdq" else QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method={"minmax": CalibrationMethod.MinMax,
                                              "entropy": CalibrationMethod.Entropy,
                                              "percentile": CalibrationMethod.Percentile}[method])
        except Exception as e:  # the quantizer raises many types; the user needs one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise AmcError(f"onnxruntime could not quantize the model: {type(e).__name__}: {first}") from e
        # the shape annotations the pre-processing added: onnxruntime infers shapes itself, and
        # in a small model they are a few percent of the file
        model = onnx.load(str(out))
        del model.graph.value_info[:]
        onnx.save(model, str(out))
        os.replace(out, int8)


def ort_top1(path: str | Path, data: Any, threads: int = 1, batch_size: int = 250) -> tuple[float, np.ndarray]:
    """Top-1 (%) of the ONNX model at ``path`` on an :class:`~amc.data.ImageSet`, run in
    onnxruntime, and its predicted classes."""
    from amc.latency_runtime import ort_session

    sess = ort_session(Path(path), threads)
    name = sess.get_inputs()[0].name
    x, y = data.tensors()
    x = x.contiguous()  # onnxruntime reads NCHW
    preds = [np.asarray(sess.run(None, {name: np.ascontiguousarray(x[i:i + batch_size].numpy())})[0]).argmax(1)
             for i in range(0, len(y), batch_size)]
    pred = np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)
    return float(100.0 * (pred == y.numpy()).mean()) if len(y) else 0.0, pred


def quantize_model(model: nn.Module, input_shape: Sequence[int], splits: Any, out_dir: str | Path,
                   calib_batches: int = 8, batch_size: int = 32, seed: int = 0, fmt: str = "qoperator",
                   per_channel: bool = True, method: str = "minmax", exporter: str = "dynamo",
                   reduce_range: bool | None = None) -> dict:
    """Export ``model`` to ``OUT/model.fp32.onnx`` and quantize it to ``OUT/model.int8.onnx``.

    ``reduce_range`` None: 7-bit weights where this CPU lacks int8 dot products (:func:`reduce_range_default`).

    Returns the ``quantization`` record for ``model.json`` (no evaluation; see :func:`ort_top1`).
    """
    import onnx
    import onnxruntime

    from amc.export import export_onnx

    out_dir = Path(out_dir)
    model = model.cpu().eval()
    try:
        onnx_record = export_onnx(model, tuple(input_shape), out_dir / FP32_FILE, exporter)
    except AmcError:
        if exporter != "dynamo":
            raise
        onnx_record = export_onnx(model, tuple(input_shape), out_dir / FP32_FILE, "torchscript")
    batches, calib = calibration_images(splits, calib_batches, batch_size, seed)
    calib["method"] = method
    if reduce_range is None:
        reduce_range = reduce_range_default()
    quantize_onnx(out_dir / FP32_FILE, out_dir / INT8_FILE, batches, fmt, per_channel, method, reduce_range)
    weights = "int8 (7-bit range)" if reduce_range else "int8"
    return {"format": fmt, "weights": f"{weights}, per channel" if per_channel else f"{weights}, per tensor",
            "reduce_range": reduce_range, "activations": f"{'int8' if fmt == 'qdq' else 'uint8'}, per tensor, static",
            "calibration": calib, "fp32_onnx": onnx_record,
            "versions": {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
                         "torch": torch.__version__.split("+")[0]},
            "int8_dot_instructions": int8_dot_instructions()}

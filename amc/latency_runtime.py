"""Timing on CPU in a target runtime: threads, the allocator, interleaved rounds, onnxruntime.

The building blocks of :mod:`amc.latency_measure` (per-layer tables) and
:mod:`amc.latency_bench` (whole models): a thread-count context, :func:`prime_allocator`,
an interleaved timer for many callables, and onnxruntime sessions behind ``nn.Module``'s call so
that :func:`amc.latency.interleaved_latency` times ``ort`` models exactly as it times torch ones.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from amc.errors import AmcError
from amc.latency import MIN_SAMPLE_MS, Latency, interleaved_latency, interleaved_samples


#: independent copies of each whole model that :func:`end_to_end` times (``amc eval``, the latency
#: benchmark, the tables' calibration): one onnxruntime session of a batch-1 model can run 10% off another
COPIES = 3


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the duration, then the old count again."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def prime_allocator() -> None:
    """Raise glibc's malloc thresholds to their steady state in a long-running process.

    glibc serves an allocation at or above its mmap threshold with a fresh ``mmap`` (page
    faults and zeroing on first touch, ``munmap`` on free), and raises the threshold to the
    size of each mmapped chunk freed, up to 32 MiB. A short benchmark process that has freed
    nothing large yet pays that for every tensor as large as the largest one freed so far:
    measured here, it made plain20 at batch 64 run about 1.7x slower, and an isolated layer
    several times slower than in the network (it depends on which tensor is the largest, which
    no per-layer table can know). Allocating and freeing one 31 MiB buffer puts the allocator
    where a long-running process is anyway, for the tables and the end-to-end timings alike.
    Elsewhere than glibc this is a harmless allocation.
    """
    buf = torch.empty(31 * 2**20 // 4, dtype=torch.float32)
    del buf


def time_interleaved(runners: Sequence[Callable[[], object]], repeats: int = 10, warmup: int = 2,
                     min_sample_ms: float = 2.0) -> list[float]:
    """Median ms per call of each runner, timed in interleaved rounds of samples that last about
    ``min_sample_ms`` (:func:`amc.latency.interleaved_samples`; a microsecond-scale layer at
    batch 1 is below the timer's useful resolution otherwise)."""
    return [statistics.median(s) for s in interleaved_samples(runners, repeats, warmup, min_sample_ms)]


def quiet_onnx_export(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    """Export ``model`` at the fixed input ``x`` with the TorchScript exporter, silently."""
    from amc.export import OPSET

    try:
        # the exporter prints and warns; a table build wants its progress bar to itself
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model.to(memory_format=torch.contiguous_format), (x,), str(path), dynamo=False,
                              opset_version=OPSET, input_names=["input"], output_names=["output"])
    except Exception as e:  # the exporter raises many types; the user needs one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise AmcError(f"ONNX export for the ort runtime failed: {type(e).__name__}: {first}") from e


def ort_session(path: Path, threads: int):
    """An onnxruntime CPU session with ``threads`` intra-op threads and sequential execution."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OrtModule(nn.Module):
    """An exported model run by onnxruntime behind ``nn.Module``'s call, so that
    :func:`amc.latency.interleaved_latency` times it beside other models unchanged.

    The input's NCHW copy for onnxruntime is made once per input tensor (the timer reuses one
    input), so the timed call is ``session.run`` alone.
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], batch: int, threads: int, folder: Path) -> None:
        super().__init__()
        fd, name = tempfile.mkstemp(suffix=".onnx", dir=folder)
        os.close(fd)
        path = Path(name)
        model = copy.deepcopy(model).cpu().eval()
        quiet_onnx_export(model, torch.randn(batch, *input_shape), path)
        self.path, self.threads = path, threads
        self.session = ort_session(path, threads)
        self._x: torch.Tensor | None = None
        self._feed: dict[str, np.ndarray] = {}

    @classmethod
    def from_file(cls, path: str | Path, threads: int) -> "OrtModule":
        """An ONNX file as it is (an int8 model from :mod:`amc.quantize`), not exported from torch."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.path, self.threads = Path(path), threads
        self.session = ort_session(self.path, threads)
        self._x, self._feed = None, {}
        return self

    def another(self) -> "OrtModule":
        """A second, independent session of the same file."""
        return OrtModule.from_file(self.path, self.threads)

    def forward(self, x: torch.Tensor) -> Any:
        if x is not self._x:
            self._x, self._feed = x, {"input": np.ascontiguousarray(x.detach().cpu().numpy())}
        return self.session.run(None, self._feed)


def end_to_end(models: Mapping[str, nn.Module], input_shape: Sequence[int], batch: int, runtime: str = "torch",
               threads: int = 1, repeats: int = 20, warmup: int = 5, folder: Path | None = None,
               min_sample_ms: float = MIN_SAMPLE_MS, copies: int = COPIES) -> dict[str, Latency]:
    """Whole-model latency of each model at ``batch``, interleaved, each sample in the model's
    steady state (:mod:`amc.latency`).

    Torch models are copied (the timer switches them to channels-last in place); for ``ort``
    each plain model is exported and run in onnxruntime, and an :class:`OrtModule` is used as is.
    With ``copies > 1`` each model runs as that many independent copies (deep copies; sessions
    of one export), all interleaved, and a round's sample of the model is the median over its
    copies: how fast one copy runs depends on where its buffers landed (measured: six
    onnxruntime sessions of one mobilenetv2 0.5 at batch 1 ran 321-367 us, in one process).
    """
    if copies < 1:
        raise ValueError("copies must be >= 1")
    prime_allocator()
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch_threads(threads))
        if runtime == "ort":
            if folder is None:
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="amc-ort-")))
            first = {n: m if isinstance(m, OrtModule) else OrtModule(m, input_shape, batch, threads, folder)
                     for n, m in models.items()}
            make = lambda n, j: first[n] if j == 0 else first[n].another()  # noqa: E731
        elif runtime == "torch":
            make = lambda n, j: copy.deepcopy(models[n])  # noqa: E731
        else:
            raise AmcError(f"runtime must be 'torch' or 'ort', got {runtime!r}")
        names = list(models)  # copy j of model k is timed as str(k * copies + j): a model's copies side by side
        timed = {str(k * copies + j): make(n, j) for k, n in enumerate(names) for j in range(copies)}
        res = interleaved_latency(timed, input_shape, [batch], repeats, warmup, min_sample_ms=min_sample_ms)
    return {n: Latency(batch, [statistics.median(r) for r in
                               zip(*(res[str(k * copies + j)][batch].samples_ms for j in range(copies)))])
            for k, n in enumerate(names)}


def ort_run_overhead_ms(threads: int, folder: Path, repeats: int) -> float:
    """The fixed cost (ms) of one ``session.run``, timed on a one-element ``x + 1`` graph."""
    class Plus1(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

    path = folder / "overhead.onnx"
    quiet_onnx_export(Plus1(), torch.zeros(1, 1), path)
    sess, feed = ort_session(path, threads), {"input": np.zeros((1, 1), np.float32)}
    return time_interleaved([lambda: sess.run(None, feed)], repeats, 2)[0]

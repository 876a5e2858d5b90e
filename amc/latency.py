"""CPU latency of several models, measured side by side.

FLOPs are not speed: PocketFlow's users found "pruned" models that ran slower than the
originals (Tencent/PocketFlow issues #83 and #189; docs/method.md#published-numbers). So
``amc eval --checkpoint`` times the slim model and its unpruned base in the same process, with their runs interleaved: after a warm-up, each round runs every
model once, alternating the order from round to round, so that a noisy neighbour, a
frequency change or a cache effect hits both models alike. The figure reported is the
median of the rounds.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Latency:
    """Timings of one model at one batch size, in milliseconds per forward pass."""

    batch_size: int
    samples_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def iqr_ms(self) -> float:
        """Spread of the samples (75th minus 25th percentile): how noisy the machine was."""
        if len(self.samples_ms) < 2:
            return 0.0
        q = statistics.quantiles(self.samples_ms, n=4)
        return q[2] - q[0]


def interleaved_latency(models: Mapping[str, nn.Module], input_shape: Sequence[int],
                        batch_sizes: Sequence[int] = (1, 64), repeats: int = 20, warmup: int = 5,
                        seed: int = 0) -> dict[str, dict[int, Latency]]:
    """Time one forward pass of each model at each batch size, on CPU.

    Args:
        models: name -> model; the models are switched to eval mode and channels-last in place
            (as :func:`amc.train.evaluate` runs them: about 25% faster convs on CPU).
        input_shape: one image's shape, (C, H, W).
        batch_sizes: batch sizes to time.
        repeats: timed rounds per batch size; each round runs every model once.
        warmup: untimed rounds first (allocator, oneDNN kernel selection, caches).
        seed: seed of the random input (the same input for every model).

    Returns:
        name -> batch size -> :class:`Latency`. The thread count is ``torch.get_num_threads()``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    names = list(models)
    for m in models.values():
        m.cpu().eval().to(memory_format=torch.channels_last)
    out: dict[str, dict[int, Latency]] = {n: {} for n in names}
    g = torch.Generator().manual_seed(seed)
    for b in batch_sizes:
        x = torch.randn(b, *input_shape, generator=g).contiguous(memory_format=torch.channels_last)
        samples: dict[str, list[float]] = {n: [] for n in names}
        with torch.inference_mode():
            for r in range(warmup + repeats):
                order = names if r % 2 == 0 else names[::-1]
                for n in order:
                    t0 = time.perf_counter_ns()
                    models[n](x)
                    dt = time.perf_counter_ns() - t0
                    if r >= warmup:
                        samples[n].append(dt / 1e6)
        for n in names:
            out[n][b] = Latency(b, samples[n])
    return out

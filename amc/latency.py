"""CPU latency of several models, measured side by side.

FLOPs are not speed: PocketFlow's users found "pruned" models that ran slower than the
originals (Tencent/PocketFlow issues #83 and #189; docs/method.md#published-numbers). So
``amc eval --checkpoint`` times the slim model and its unpruned base in the same process, with
their runs interleaved: after a warm-up, each round takes one sample of every model, alternating
the order from round to round, so that a noisy neighbour, a frequency change or a cache effect
hits both models alike. The figure reported is the median of the rounds.

A sample runs its model back to back for at least ``min_sample_ms`` and counts the mean per
call: the steady state of a serving loop, with the model's weights in cache. A single call
right after another model's would be timed with its weights evicted; at batch 1, where a call
takes a fraction of a millisecond, that cost the slim model more than the base and was noisy
from one run to the next (measured on mobilenetv2 0.5 in onnxruntime: 0.19 ms a call against
0.13 ms back to back, the base 0.34 ms either way). At batch 64 one call outlasts the sample
and nothing changes.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from amc.errors import warn_once


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


#: the shortest sample of a whole model (ms): long enough to hold a batch-1 model in its steady state
MIN_SAMPLE_MS = 5.0


#: set to 1 to skip :func:`warn_if_busy` (the test suite does: its workers keep each other busy)
NO_LOAD_CHECK = "AMC_NO_LOAD_CHECK"
_load_checked = False


def _cpu_jiffies(cpus: set[int], stat: str = "/proc/stat") -> tuple[int, int]:
    """(busy, total) jiffies of ``cpus`` since boot, from Linux's ``/proc/stat``."""
    busy = total = 0
    with open(stat) as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
                total += sum(ticks)
                busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def busy_cpus(window_s: float = 0.25, stat: str = "/proc/stat") -> tuple[float, int] | None:
    """How many of this process's CPUs other work keeps busy, and how many it has: measured over
    ``window_s`` while this process sleeps (what its own threads still spend, e.g. OpenMP
    workers spinning down, is taken off). None where ``/proc/stat`` cannot say (not Linux)."""
    try:
        cpus, tick = os.sched_getaffinity(0), os.sysconf("SC_CLK_TCK")
        own0, (b0, t0) = time.process_time(), _cpu_jiffies(cpus, stat)
        time.sleep(window_s)
        own1, (b1, t1) = time.process_time(), _cpu_jiffies(cpus, stat)
    except (OSError, AttributeError, ValueError):
        return None
    if t1 <= t0:
        return None
    others = max(0.0, (b1 - b0) - (own1 - own0) * tick)
    return others / (t1 - t0) * len(cpus), len(cpus)


def warn_if_busy(threads: int) -> None:
    """Warn, once per process, when other work keeps more than half of the CPUs a timing leaves
    free busy (at least half a CPU): a uniform ladder timed beside other jobs once picked the
    wrong model (README, "Latency-constrained AMC"). ``AMC_NO_LOAD_CHECK=1`` skips the check."""
    global _load_checked
    if _load_checked or os.environ.get(NO_LOAD_CHECK) == "1":
        return
    _load_checked = True
    seen = busy_cpus()
    if seen is None:
        return
    busy, cpus = seen
    if busy > max(0.5, 0.5 * (cpus - threads)):
        warn_once(f"other processes keep {busy:.1f} of this machine's {cpus} CPUs busy: the timings that follow "
                  f"will be noisy (time on a quiet machine)")


def interleaved_samples(runners: Sequence[Callable[[], object]], repeats: int = 10, warmup: int = 2,
                        min_sample_ms: float = 0.0) -> list[list[float]]:
    """``repeats`` samples (ms per call) of each runner, taken in interleaved rounds.

    Round ``r`` takes one sample of every runner, in order on even rounds and in reverse on odd
    ones; the first ``warmup`` rounds are not kept. A sample runs its runner back to back enough
    times to last about ``min_sample_ms`` (counted from one timed call after a first one; once,
    without those two calls, when ``min_sample_ms`` is 0) and records the mean per call.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    warn_if_busy(torch.get_num_threads())
    counts = []
    for run in runners:
        if min_sample_ms <= 0:
            counts.append(1)
            continue
        run()  # the first call pays for kernel selection and allocation
        t0 = time.perf_counter()
        run()
        dt = max(time.perf_counter() - t0, 1e-7)
        counts.append(max(1, min(10_000, math.ceil(min_sample_ms / 1e3 / dt))))
    samples: list[list[float]] = [[] for _ in runners]
    for r in range(warmup + repeats):
        order = range(len(runners)) if r % 2 == 0 else reversed(range(len(runners)))
        for i in order:
            run, n = runners[i], counts[i]
            t0 = time.perf_counter_ns()
            for _ in range(n):
                run()
            dt = time.perf_counter_ns() - t0
            if r >= warmup:
                samples[i].append(dt / n / 1e6)
    return samples


def interleaved_latency(models: Mapping[str, nn.Module], input_shape: Sequence[int],
                        batch_sizes: Sequence[int] = (1, 64), repeats: int = 20, warmup: int = 5,
                        seed: int = 0, min_sample_ms: float = MIN_SAMPLE_MS) -> dict[str, dict[int, Latency]]:
    """Time one forward pass of each model at each batch size, on CPU.

    Args:
        models: name -> model; the models are switched to eval mode and channels-last in place
            (as :func:`amc.train.evaluate` runs them: about 25% faster convs on CPU).
        input_shape: one image's shape, (C, H, W).
        batch_sizes: batch sizes to time.
        repeats: timed rounds per batch size; each round takes one sample of every model.
        warmup: untimed rounds first (allocator, oneDNN kernel selection, caches).
        seed: seed of the random input (the same input for every model).
        min_sample_ms: the shortest sample; a faster model runs back to back within one
            (0: one call per sample).

    Returns:
        name -> batch size -> :class:`Latency`. The thread count is ``torch.get_num_threads()``.
    """
    names = list(models)
    for m in models.values():
        m.cpu().eval().to(memory_format=torch.channels_last)
    out: dict[str, dict[int, Latency]] = {n: {} for n in names}
    g = torch.Generator().manual_seed(seed)
    for b in batch_sizes:
        x = torch.randn(b, *input_shape, generator=g).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            samples = interleaved_samples([lambda m=models[n]: m(x) for n in names], repeats, warmup, min_sample_ms)
        for n, s in zip(names, samples):
            out[n][b] = Latency(b, s)
    return out

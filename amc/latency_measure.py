"""Measuring latency tables: each layer's block, timed on a grid of kept channel counts.

For every conv/linear layer of the graph, :func:`build_latency_model` times a *block* that
runs as the layer runs in the network: the same input size, kernel, stride, padding,
dilation, bias and groups (a depthwise conv keeps ``groups == channels``), followed by the
BatchNorm and activation that follow it in the model, if any. What follows a layer is read
off one traced forward pass (:func:`find_followers`): a BN whose input *is* the layer's output
tensor, then an activation whose input is the BN's (or the layer's) output. An add or any
other op in between ends the block, so a ResNet block's last conv is timed with its BN only.

- Runtime ``torch``: eager PyTorch on CPU, channels-last, under ``torch.inference_mode``, with
  ``torch.set_num_threads(threads)`` (restored afterwards).
- Runtime ``ort``: onnxruntime's CPU execution provider; each block is exported with the
  TorchScript exporter and run with ``intra_op_num_threads=threads``, so ORT fuses what it
  fuses (Conv+BN+ReLU). The fixed cost of one ``session.run`` (timed on a one-element graph)
  is subtracted from every block, because the whole model pays it once, not once per layer.

Grid per axis (:func:`grid_axis`): every allowed count when there are at most
``exact_points`` of them, else ``grid_points`` counts spread over the allowed ones, plus 1.
The points of one block are timed interleaved (each round runs every point once, in
alternating order), and each point's figure is the median of its rounds, so that drift on a
shared machine hits all points alike. Layers whose block and grid are identical share one
measurement.
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from amc.budget import allowed_counts
from amc.errors import AmcError
from amc.graph import LayerGraph
from amc.latency_fit import calibrate, calibration_policies
from amc.latency_runtime import (OrtModule, end_to_end, ort_run_overhead_ms, ort_session, prime_allocator,
                                 quiet_onnx_export, time_interleaved, torch_threads)
from amc.latency_table import (LatencyModel, LayerTable, cache_lock, cache_path, cache_root, fingerprint_id,
                               load_cached, make_fingerprint, save_cached)

ACTIVATIONS = frozenset({"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "silu", "silu_", "hardswish",
                         "hardswish_", "gelu", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu", "mish",
                         "sigmoid", "sigmoid_", "hardsigmoid", "tanh", "tanh_", "clamp", "clamp_", "clip", "softplus"})
"""Element-wise ops recognised as "the activation that follows" a layer."""


# --------------------------------------------------------------------------- what follows a layer

@dataclass(frozen=True)
class Follower:
    """The BN and activation that run right after a layer in the traced forward pass."""

    bn: bool = False
    act: tuple[str, tuple, tuple] | None = None  # (function name, extra positional args, sorted kwargs)


class _Recorder(TorchFunctionMode):
    """Records convs, linears, batch norms and activations with their input and output tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, torch.Tensor, torch.Tensor, tuple, dict]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in ("conv2d", "linear", "batch_norm") or name in ACTIVATIONS:
            first = args[0] if args else kwargs.get("input")
            if isinstance(first, torch.Tensor) and isinstance(out, torch.Tensor):
                # the recorded tensors stay referenced here, so no id/identity is ever reused
                self.calls.append((name, first, out, tuple(args[1:]), dict(kwargs)))
        return out


def _simple(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def find_followers(model: nn.Module, input_shape: Sequence[int]) -> dict[str, Follower]:
    """Layer name -> the BN and activation applied directly to its output (one forward pass).

    Functional activations (``F.relu``, ``torch.relu``, ``x.relu()``) are seen as well as
    modules. A layer whose follower cannot be read is timed alone.
    """
    owner = {id(p): n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
             for p in m.parameters(recurse=False)}
    rec = _Recorder()
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        with torch.no_grad(), rec:
            model(torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu"))
    finally:
        model.train(was_training)
    by_output: dict[int, str] = {}  # id of a layer's (or its BN's) output -> layer name
    found: dict[str, dict] = {}
    for name, first, out, rest, kwargs in rec.calls:
        if name in ("conv2d", "linear"):
            weight = rest[0] if rest else kwargs.get("weight")
            layer = owner.get(id(weight))
            if layer is not None and layer not in found:
                found[layer] = {"bn": False, "act": None}
                by_output[id(out)] = layer
        elif id(first) in by_output:
            layer = by_output.pop(id(first))
            f = found[layer]
            if name == "batch_norm" and not f["bn"] and f["act"] is None and first.dim() == 4:
                f["bn"] = True
                by_output[id(out)] = layer
            elif name in ACTIVATIONS and f["act"] is None and all(_simple(a) for a in rest) \
                    and all(_simple(v) for v in kwargs.values()):
                f["act"] = (name, tuple(rest), tuple(sorted(kwargs.items())))
    return {n: Follower(**f) for n, f in found.items()}


class _Act(nn.Module):
    """An activation replayed by name: ``F.<name>`` (else ``torch.<name>``) with its arguments."""

    def __init__(self, name: str, args: tuple, kwargs: tuple) -> None:
        super().__init__()
        self.fn = getattr(F, name, None) or getattr(torch, name)
        self.args, self.kwargs = tuple(args), dict(kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *self.args, **self.kwargs)


# --------------------------------------------------------------------------- blocks and grids

def grid_axis(channels: int, channel_round: int = 1, grid_points: int = 6, exact_points: int = 8,
              unit: int = 1) -> list[int]:
    """Counts at which a group's side of a layer is timed.

    Every allowed count (:func:`amc.budget.allowed_counts`) when there are at most
    ``exact_points``; else ``unit`` (1, or a grouped conv's groups) and ``grid_points - 1``
    allowed counts evenly spread by index (the first and the full count included),
    ``grid_points`` in all. ``channel_round`` is the group's step (:meth:`ChannelGroup.step`).
    """
    allowed = allowed_counts(channels, channel_round)
    if len(allowed) <= max(exact_points, 1):
        return allowed
    want = grid_points - 1 if allowed[0] != 1 else grid_points
    picks = {allowed[int(round(i * (len(allowed) - 1) / max(want - 1, 1)))] for i in range(max(want, 2))}
    return sorted(picks | {unit, channels})


@dataclass(frozen=True)
class BlockSpec:
    """Everything that determines one layer's block latency, and the grid it is timed on."""

    kind: str  # conv, dwconv or linear
    cin: int
    cout: int
    k: tuple[int, int]
    stride: tuple[int, int]
    padding: Any  # tuple, or "same"/"valid"
    dilation: tuple[int, int]
    groups: int  # a plain or grouped conv's groups; 1 for dwconv (groups follow the count)
    padding_mode: str
    bias: bool
    in_hw: tuple[int, int]  # conv: input H, W; linear: (rows, 1)
    bn: bool
    act: tuple[str, tuple, tuple] | None
    in_axis: tuple[int, ...]
    out_axis: tuple[int, ...]

    def key(self) -> str:
        return repr(asdict(self))

    def make(self, ci: int, co: int) -> nn.Module:
        """The block at ``ci`` kept inputs and ``co`` kept outputs, in eval mode."""
        layers: list[nn.Module] = []
        if self.kind == "linear":
            layers.append(nn.Linear(ci, co, bias=self.bias))
        else:
            dw = self.kind == "dwconv"
            co = ci if dw else co
            layers.append(nn.Conv2d(ci, co, self.k, self.stride, self.padding, self.dilation,
                                    ci if dw else self.groups, self.bias, self.padding_mode))
            if self.bn:
                layers.append(nn.BatchNorm2d(co))
        if self.act is not None:
            layers.append(_Act(*self.act))
        return nn.Sequential(*layers).eval()

    def weight_mib(self, ci: int, co: int) -> float:
        """MiB of float32 weights and bias the layer holds at ``ci`` kept inputs and ``co`` kept
        outputs: bilinear in the two counts, so a table of it interpolates exactly."""
        if self.kind == "linear":
            n = ci * co + co * self.bias
        elif self.kind == "dwconv":
            n = ci * (self.k[0] * self.k[1] + self.bias)
        else:
            n = ci * co * self.k[0] * self.k[1] / self.groups + co * self.bias
        return 4.0 * n / 2**20

    def input(self, batch: int, ci: int, generator: torch.Generator) -> torch.Tensor:
        if self.kind == "linear":
            rows = self.in_hw[0]
            return torch.randn(batch, ci, generator=generator) if rows == 1 else \
                torch.randn(batch, rows, ci, generator=generator)
        return torch.randn(batch, ci, *self.in_hw, generator=generator)


def plan_blocks(model: nn.Module, graph: LayerGraph, channel_round: int = 1, grid_points: int = 6,
                exact_points: int = 8) -> dict[str, BlockSpec]:
    """Layer name -> its block and grid, for every conv/linear layer of ``graph``."""
    followers = find_followers(model, graph.input_shape)
    out: dict[str, BlockSpec] = {}
    for name, li in graph.layers.items():
        m = model.get_submodule(name)
        f = followers.get(name, Follower())
        axis = lambda c, g: tuple(grid_axis(c, graph.groups[g].step(channel_round), grid_points, exact_points,
                                            graph.groups[g].unit)) if g is not None else (c,)  # noqa: E731
        if isinstance(m, nn.Linear):
            out[name] = BlockSpec("linear", li.cin, li.cout, (1, 1), (1, 1), (0, 0), (1, 1), 1, "zeros",
                                  m.bias is not None, (li.out_hw[0], 1), False, f.act,
                                  axis(li.cin, li.in_group), axis(li.cout, li.out_group))
            continue
        dw = li.kind == "dwconv"
        pad = m.padding if isinstance(m.padding, str) else tuple(m.padding)
        out[name] = BlockSpec(li.kind, li.cin, li.cout, tuple(m.kernel_size), tuple(m.stride), pad,
                              tuple(m.dilation), 1 if dw else m.groups, m.padding_mode, m.bias is not None,
                              tuple(li.in_hw), f.bn, f.act, axis(li.cin, li.in_group),
                              (li.cout,) if dw else axis(li.cout, li.out_group))
    return out


def measure_block(spec: BlockSpec, batch: int, runtime: str = "torch", threads: int = 1, repeats: int = 10,
                  warmup: int = 2, min_sample_ms: float = 2.0, folder: Path | None = None,
                  overhead_ms: float = 0.0) -> np.ndarray:
    """Raw latency (ms) of ``spec``'s block at every grid point, ``[len(in_axis), len(out_axis)]``."""
    prime_allocator()
    g = torch.Generator().manual_seed(0)
    points = [(ci, co) for ci in spec.in_axis for co in spec.out_axis]
    runners: list[Callable[[], object]] = []
    with torch_threads(threads), contextlib.ExitStack() as stack:
        if runtime == "ort" and folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="amc-ort-")))
        for i, (ci, co) in enumerate(points):
            block, x = spec.make(ci, co), spec.input(batch, ci, g)
            if runtime == "torch":
                if x.dim() == 4:
                    block = block.to(memory_format=torch.channels_last)
                    x = x.contiguous(memory_format=torch.channels_last)
                runners.append(lambda b=block, x=x: b(x))
            else:
                path = folder / f"block{i}.onnx"
                quiet_onnx_export(block, x, path)
                sess, feed = ort_session(path, threads), {"input": x.numpy()}
                runners.append(lambda s=sess, f=feed: s.run(None, f))
        with torch.inference_mode():
            ms = time_interleaved(runners, repeats, warmup, min_sample_ms)
    ms = [max(0.0, m - overhead_ms) for m in ms]
    return np.asarray(ms, dtype=np.float64).reshape(len(spec.in_axis), len(spec.out_axis))


# --------------------------------------------------------------------------- the model

def build_latency_model(model: nn.Module, graph: LayerGraph, input_shape: Sequence[int] | None = None,
                        runtime: str = "torch", batch: int = 64, threads: int = 1, channel_round: int = 1,
                        grid_points: int = 6, exact_points: int = 8, cache_dir: str | Path | None = None,
                        use_cache: bool = True, rebuild: bool = False, progress: bool = True, repeats: int = 10,
                        warmup: int = 2, min_sample_ms: float = 2.0,
                        slim: Callable[[list[int]], nn.Module] | None = None) -> LatencyModel:
    """Load the latency model of ``model`` from the cache, or measure and cache it.

    Args:
        model: the unpruned model (not modified).
        graph: its layer graph (``ChannelPruner.graph``); the tables follow its groups.
        input_shape: one input's ``(C, H, W)`` (default: the graph's).
        runtime: ``torch`` or ``ort``.
        batch, threads: the target's batch size and thread count.
        channel_round: the search's channel rounding; the grid uses its allowed counts.
        grid_points: points per axis where the allowed counts are too many to time them all.
        exact_points: time every allowed count when there are at most this many.
        cache_dir: overrides ``$AMC_CACHE_DIR`` and the user cache folder (see
            :func:`amc.latency_table.cache_root`).
        use_cache: read and write the cache; ``rebuild`` measures anew but still writes it.
        progress: show a tqdm bar while measuring.
        repeats, warmup, min_sample_ms: timing rounds per grid point (see :func:`time_interleaved`).
        slim: builds the slim model for given kept counts (``ChannelPruner.prune`` without
            reconstruction). With it, the tables are fitted on the base and nine slim models
            (:mod:`amc.latency_fit`) instead of the base alone.

    Returns:
        The model; ``.cache_file`` is the cache path (None without the cache) and
        ``.from_cache`` says whether it was loaded. A corrupt or foreign cache file is
        rebuilt with a one-line ``warning:`` on stderr.
    """
    if runtime not in ("torch", "ort"):
        raise AmcError(f"runtime must be 'torch' or 'ort', got {runtime!r}")
    for what, v, lo in (("batch", batch, 1), ("threads", threads, 1), ("channel_round", channel_round, 1),
                        ("grid_points", grid_points, 2), ("repeats", repeats, 1)):
        if not isinstance(v, int) or v < lo:
            raise AmcError(f"{what} must be an integer >= {lo}, got {v}")
    input_shape = tuple(graph.input_shape if input_shape is None else input_shape)
    specs = plan_blocks(model, graph, channel_round, grid_points, exact_points)
    shapes = {"input_shape": list(input_shape), "layers": {n: s.key() for n, s in specs.items()}}
    fp = make_fingerprint(runtime, batch, threads, shapes)
    path = cache_path(cache_root(cache_dir), fp)
    # one process builds a table at a time; the others wait, then load what it wrote
    with cache_lock(path) if use_cache else contextlib.nullcontext():
        if use_cache and not rebuild:
            cached = load_cached(path, fp, graph)
            if cached is not None:
                cached.cache_file, cached.from_cache = path, True
                return cached
        lm = _measure(model, graph, specs, input_shape, fp, runtime, batch, threads, channel_round, grid_points,
                      exact_points, progress, repeats, warmup, min_sample_ms, slim)
        if use_cache:
            save_cached(path, lm)
        lm.cache_file, lm.from_cache = (path if use_cache else None), False
        return lm


def _measure(model: nn.Module, graph: LayerGraph, specs: dict[str, Any], input_shape: tuple[int, ...],
             fp: dict[str, Any], runtime: str, batch: int, threads: int, channel_round: int, grid_points: int,
             exact_points: int, progress: bool, repeats: int, warmup: int, min_sample_ms: float,
             slim: Callable[[list[int]], nn.Module] | None) -> LatencyModel:
    """Time every distinct block on its grid and the whole models, and fit the tables
    (:func:`build_latency_model` without the cache)."""
    from tqdm import tqdm

    unique: dict[str, list[str]] = {}
    for name, s in specs.items():
        unique.setdefault(s.key(), []).append(name)
    n_points = sum(len(specs[ns[0]].in_axis) * len(specs[ns[0]].out_axis) for ns in unique.values())
    t0 = time.perf_counter()
    tables: dict[str, LayerTable] = {}
    weights_mib: dict[str, LayerTable] = {}  # each layer's weight MiB on its table's grid
    overhead = 0.0
    with tempfile.TemporaryDirectory(prefix="amc-latency-") as tmp, \
            tqdm(total=n_points + 1, disable=not progress, unit="pt", leave=False,
                 desc=f"latency table ({runtime}, batch {batch}, {threads} thread{'s' * (threads > 1)})") as bar:
        folder = Path(tmp)
        if runtime == "ort":
            overhead = ort_run_overhead_ms(threads, folder, repeats)
        # the whole models are timed before and after the blocks, interleaved, and the base's
        # faster median kept: on a shared machine noise only ever adds time, and one slow spell
        # here would bias every prediction; the ratios to the base are averaged over both passes
        plans = calibration_policies(graph.groups, channel_round) if slim is not None else []
        whole: dict[str, Any] = {"model": model, **{f"cal-{i}": slim(c) for i, c in enumerate(plans)}}
        if runtime == "ort":  # exported once, timed in both passes
            whole = {n: OrtModule(m, input_shape, batch, threads, folder) for n, m in whole.items()}
        first = end_to_end(whole, input_shape, batch, runtime, threads, max(repeats, 10), warmup, folder)
        for names in unique.values():
            s = specs[names[0]]
            bar.set_postfix_str(names[0], refresh=False)
            raw = measure_block(s, batch, runtime, threads, repeats, warmup, min_sample_ms, folder, overhead)
            tab = LayerTable(list(s.in_axis), list(s.out_axis), raw)
            mib = LayerTable(tab.in_axis, tab.out_axis, [[s.weight_mib(ci, co) for co in s.out_axis]
                                                         for ci in s.in_axis])
            for n in names:
                tables[n], weights_mib[n] = tab, mib
            bar.update(raw.size)
        bar.set_postfix_str("whole models", refresh=False)
        again = end_to_end(whole, input_shape, batch, runtime, threads, max(repeats, 10), warmup, folder)
        full = min(first["model"].median_ms, again["model"].median_ms)
        ratios = [float(np.mean([r[f"cal-{i}"].median_ms / r["model"].median_ms for r in (first, again)]))
                  for i in range(len(plans))]
        bar.update(1)
    # the remainder only keeps the model valid where every block timed at or under onnxruntime's
    # per-run overhead (a tiny net at batch 1-2): the whole model's time then all goes to it
    unscaled = LatencyModel(graph, tables, remainder_ms=1.0)  # only its per-layer sums are used
    tables_full = sum(unscaled.layer_ms().values())
    tables_cal = [sum(unscaled.layer_ms(c).values()) for c in plans]
    floor = sum(t.ms.min() for t in tables.values())  # one term per layer, shared tables included
    sizes = LatencyModel(graph, weights_mib, remainder_ms=1.0)  # the same sums, of weight MiB
    weights_full = sum(sizes.layer_ms().values())
    weights_cal = [sum(sizes.layer_ms(c).values()) for c in plans]
    scale, remainder, shift, per_mib = calibrate(full, tables_full, ratios, tables_cal, floor, weights_full,
                                                 weights_cal)
    if scale != 1.0 or shift or per_mib:
        one_name = {id(t): n for n, t in tables.items()}  # shared tables are fitted once
        fitted = {i: LayerTable(tables[n].in_axis, tables[n].out_axis,
                                np.maximum(tables[n].raw_ms - shift * tables[n].ms.min(), 0.0) * scale
                                + per_mib * weights_mib[n].raw_ms) for i, n in one_name.items()}
        tables = {n: fitted[id(t)] for n, t in tables.items()}
    meta = {"fingerprint": fp, "fingerprint_id": fingerprint_id(fp), "runtime": runtime, "batch": batch,
            "threads": threads, "channel_round": channel_round, "grid_points": grid_points,
            "exact_points": exact_points, "input_shape": list(input_shape), "measured_full_ms": full,
            "tables_full_ms": tables_full, "tables_scale": scale, "tables_shift": shift,
            "weights_full_mib": weights_full, "weights_ms_per_mib": per_mib,
            "calibration": {"counts": plans, "measured_ratios": ratios, "tables_ms": tables_cal,
                            "weights_mib": weights_cal},
            "ort_run_overhead_ms": overhead if runtime == "ort" else None,
            "points": n_points, "distinct_blocks": len(unique), "build_seconds": time.perf_counter() - t0}
    return LatencyModel(graph, tables, remainder, meta)

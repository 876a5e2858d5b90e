"""A measured latency model: per-layer lookup tables that the budget wall can use.

FLOPs are not speed (the README's "Why AMC's FLOPs cut is not a bigger speedup"), so a
latency budget needs the latency of the slim model as a function of the kept channel counts,
without building and timing it. :class:`LatencyModel` predicts it as

    ``remainder + sum over conv/linear layers of table[layer](kept inputs, kept outputs)``

- **Tables.** Each layer's table holds the latency of that layer *as it runs in the network*
  (same input size, stride and groups, with the BN and activation that follow it) on a grid of
  kept input x output counts; :mod:`amc.latency_measure` measures it in the target runtime.
  Between grid points the table is interpolated bilinearly; outside it, the nearest edge value
  is used (a count below the grid costs what the smallest grid point costs).
- **Monotone by construction.** Measured tables are noisy, and a table that says "keeping
  more channels is faster" would break the wall's guarantee (later groups at the lower bound
  must be the cheapest completion). So every table is replaced by its *smallest monotone upper
  envelope*: a running maximum along the input axis, then along the output axis, which makes
  each entry the maximum of the raw entries at or below it in both counts. Bilinear
  interpolation of a table that is non-decreasing along each axis is itself non-decreasing in
  each count, and a sum of such terms is too: the whole model is monotone in every group.
  The envelope only ever raises a prediction, so noise errs towards slower, i.e. safe.
- **Remainder, scale and shift.** What no table covers (stem input, pooling, classifier glue,
  residual adds, flatten, Python overhead) is one constant, and isolated blocks do not cost
  exactly what they cost in the network (each pays per-call costs the network pays once).
  Both are fitted on whole models timed end to end, the base and nine slim models spread over
  the widths searches visit: ``predicted = scale * (sum of tables + g * weight MiB + c)``, fitted on the slim
  models' measured latency ratios with the base exact; ``c >= 0`` is the remainder, ``c < 0``
  a per-block cost taken off every table (``meta["tables_scale"]``, ``meta["tables_shift"]``,
  ``meta["calibration"]``; :func:`amc.latency_fit.calibrate`). A third term, fitted with
  them, costs each layer's weight bytes (``meta["weights_ms_per_mib"]``): a block timed alone
  finds its weights in cache, a layer of a net whose weights outgrow the cache does not.
- **Cache.** A built model is kept as JSON under a fingerprint (CPU model, runtime and its
  version, threads, batch, and a hash of the layer shapes and grids); see :func:`cache_root`.
"""
from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from amc.checkpoint import atomic_write_json
from amc.errors import AmcError
from amc.graph import LayerGraph

FORMAT = 5  # 5: a weight-bytes term in the fit; whole models timed as 3 copies each
"""Version of the cache file layout and of the measuring method (part of the fingerprint):
bump it when either changes, and old files are rebuilt."""


def monotone_envelope(values: np.ndarray) -> np.ndarray:
    """The smallest table >= ``values`` that is non-decreasing along both axes.

    A running maximum along axis 0 makes every column non-decreasing; a running maximum of
    that along axis 1 keeps the columns non-decreasing (a maximum of non-decreasing sequences)
    and makes every row non-decreasing. Entry (i, j) ends as ``max(values[:i+1, :j+1])``,
    which any monotone table above ``values`` must reach, so the envelope is the smallest one.
    """
    v = np.asarray(values, dtype=np.float64)
    return np.maximum.accumulate(np.maximum.accumulate(v, axis=0), axis=1)


def _axis_lookup(axis: Sequence[int]) -> list[tuple[int, int, float]]:
    """For every count 0..axis[-1]: (lower index, upper index, weight of the upper point)."""
    out = []
    last = len(axis) - 1
    for c in range(axis[-1] + 1):
        if last == 0 or c <= axis[0]:
            out.append((0, min(1, last), 0.0))
            continue
        i = min(bisect.bisect_right(axis, c) - 1, last - 1)
        out.append((i, i + 1, (c - axis[i]) / (axis[i + 1] - axis[i])))
    return out


@dataclass
class LayerTable:
    """One layer's latency (ms) on a grid of kept input x output channel counts.

    ``raw_ms[i][j]`` is the latency measured (or given) at ``in_axis[i]`` inputs and
    ``out_axis[j]`` outputs; ``ms`` is its monotone envelope, which predictions use. An axis
    of one point is a count that never changes (a layer side outside every group), and a
    depthwise layer's table has one output point: its output count is its input count.
    """

    in_axis: list[int]
    out_axis: list[int]
    raw_ms: np.ndarray
    ms: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.in_axis, self.out_axis = [int(a) for a in self.in_axis], [int(a) for a in self.out_axis]
        self.raw_ms = np.asarray(self.raw_ms, dtype=np.float64)
        for axis in (self.in_axis, self.out_axis):
            if not axis or axis[0] < 1 or any(b <= a for a, b in zip(axis, axis[1:])):
                raise AmcError(f"latency table axis must be increasing counts >= 1, got {axis}")
        if self.raw_ms.shape != (len(self.in_axis), len(self.out_axis)):
            raise AmcError(f"latency table has shape {self.raw_ms.shape}, its axes want "
                           f"{(len(self.in_axis), len(self.out_axis))}")
        if not np.all(np.isfinite(self.raw_ms)) or np.any(self.raw_ms < 0):
            raise AmcError("latency table holds a negative or non-finite value")
        self.ms = monotone_envelope(self.raw_ms)
        self._rows = self.ms.tolist()  # Python floats: the wall calls this thousands of times
        self._in, self._out = _axis_lookup(self.in_axis), _axis_lookup(self.out_axis)

    def __call__(self, cin: int, cout: int) -> float:
        """Bilinear interpolation of the envelope; exact at grid points, clamped outside."""
        i0, i1, fi = self._in[min(max(cin, 0), len(self._in) - 1)]
        j0, j1, fj = self._out[min(max(cout, 0), len(self._out) - 1)]
        r0, r1 = self._rows[i0], self._rows[i1]
        # a + f * (b - a) with b >= a is non-decreasing in f in floating point too, where
        # (1 - f) * a + f * b can step back by an ulp
        v0 = r0[j0] + fj * (r0[j1] - r0[j0])
        v1 = r1[j0] + fj * (r1[j1] - r1[j0])
        return v0 + fi * (v1 - v0)

    def to_json(self) -> dict:
        return {"in_axis": self.in_axis, "out_axis": self.out_axis, "raw_ms": self.raw_ms.tolist()}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> LayerTable:
        return cls(list(obj["in_axis"]), list(obj["out_axis"]), np.asarray(obj["raw_ms"], dtype=np.float64))


TableLike = LayerTable | tuple[Sequence[int], Sequence[int], Any]


class LatencyModel:
    """Predicted latency (ms) of the slim model for any per-group kept channel counts.

    A drop-in for :class:`amc.budget.ResourceModel` in :class:`amc.budget.PruningState`:
    ``model(counts)``, ``full``, ``full_counts()``, ``graph`` and ``kind``; ``linear`` is
    False, so the wall checks each candidate count exactly (bisection, exact because the
    prediction is monotone in every count).

    Args:
        graph: the layer graph the counts refer to.
        tables: layer name -> :class:`LayerTable`, or ``(in_axis, out_axis, values)`` (a
            synthetic table: nothing is timed). Layers without a table cost nothing beyond
            ``remainder_ms``. Layers may share one table object.
        remainder_ms: the constant latency of everything no table covers.
        meta: how the tables were made (runtime, batch, threads, fingerprint, ...).
    """

    kind = "latency"
    linear = False
    cache_file: Path | None = None  # set by amc.latency_measure.build_latency_model
    from_cache = False

    def __init__(self, graph: LayerGraph, tables: Mapping[str, TableLike], remainder_ms: float = 0.0,
                 meta: Mapping[str, Any] | None = None) -> None:
        if not (math.isfinite(remainder_ms) and remainder_ms >= 0):
            raise AmcError(f"latency remainder must be a finite number >= 0, got {remainder_ms}")
        self.graph, self.remainder_ms, self.meta = graph, float(remainder_ms), dict(meta or {})
        self.tables: dict[str, LayerTable] = {}
        for name, tab in tables.items():
            if name not in graph.layers:
                raise AmcError(f"latency table names layer {name!r}, which the model does not have")
            self.tables[name] = tab if isinstance(tab, LayerTable) else LayerTable(*tab)
        self._terms = []
        for name, li in graph.layers.items():
            if name in self.tables:
                self._terms.append((name, li.in_group, li.out_group, li.cin, li.cout, self.tables[name]))
        self.full = self(self.full_counts())
        if not self.full > 0:  # every budget is a share of it
            raise AmcError("the latency model predicts no time at all for the unpruned model")

    @classmethod
    def from_tables(cls, graph: LayerGraph, tables: Mapping[str, TableLike], remainder_ms: float = 0.0,
                    meta: Mapping[str, Any] | None = None) -> LatencyModel:
        """A model from ready tables (e.g. synthetic ones in tests); never times anything."""
        return cls(graph, tables, remainder_ms, meta)

    def full_counts(self) -> list[int]:
        return [g.channels for g in self.graph.groups]

    def _layer_items(self, counts: Sequence[int]):
        for name, gin, gout, cin, cout, tab in self._terms:
            yield name, tab(cin if gin is None else counts[gin], cout if gout is None else counts[gout])

    def __call__(self, counts: Sequence[int]) -> float:
        """Predicted latency in ms; non-decreasing in every count."""
        total = self.remainder_ms
        for _, ms in self._layer_items(counts):
            total += ms
        return total

    def predicted_ms(self, counts: Sequence[int] | None = None) -> float:
        """Predicted latency in ms (full counts when None)."""
        return self(self.full_counts() if counts is None else counts)

    def predicted_ratio(self, counts: Sequence[int]) -> float:
        """Predicted latency as a share of the unpruned model's predicted latency."""
        return self(counts) / self.full if self.full > 0 else 1.0

    def layer_ms(self, counts: Sequence[int] | None = None) -> dict[str, float]:
        """Each tabled layer's predicted latency in ms (full counts when None)."""
        return dict(self._layer_items(self.full_counts() if counts is None else counts))

    def group_ms(self, counts: Sequence[int] | None = None) -> list[float]:
        """Per group, the predicted latency of its consumer layers: the latency analogue of the
        embedding's ``FLOPs[t]`` (and, summed over later groups, of ``rest``)."""
        per = self.layer_ms(counts)
        return [sum(per.get(n, 0.0) for n in g.consumers) for g in self.graph.groups]

    def breakdown(self, counts: Sequence[int] | None = None) -> dict:
        """Where time goes: each layer's share of the predicted latency beside its FLOPs share.

        Returns ``{"predicted_ms", "remainder_ms", "remainder_share", "layers": [{"name",
        "kind", "in_group", "out_group", "cin", "cout", "ms", "latency_share", "macs",
        "flops_share"}, ...]}`` in forward order; a layer without a table has ``ms`` None.
        """
        counts = self.full_counts() if counts is None else list(counts)
        per = self.layer_ms(counts)
        total_ms = self(counts)
        rows, macs = [], {}
        for name, li in self.graph.layers.items():
            cin = li.cin if li.in_group is None else counts[li.in_group]
            cout = li.cout if li.out_group is None else counts[li.out_group]
            macs[name] = li.macs(cin, cin if li.kind == "dwconv" else cout)
            rows.append({"name": name, "kind": li.kind, "in_group": li.in_group, "out_group": li.out_group,
                         "cin": cin, "cout": cin if li.kind == "dwconv" else cout, "ms": per.get(name),
                         "latency_share": per[name] / total_ms if name in per and total_ms > 0 else None,
                         "macs": macs[name]})
        all_macs = sum(macs.values())
        for r in rows:
            r["flops_share"] = r["macs"] / all_macs if all_macs else 0.0
        return {"predicted_ms": total_ms, "remainder_ms": self.remainder_ms,
                "remainder_share": self.remainder_ms / total_ms if total_ms > 0 else 0.0, "layers": rows}

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> dict:
        """The cache file's content; layers sharing a table object share one entry."""
        keys: dict[int, str] = {}
        tables: dict[str, dict] = {}
        layers: dict[str, str] = {}
        for name, tab in self.tables.items():
            if id(tab) not in keys:
                keys[id(tab)] = f"t{len(keys)}"
                tables[keys[id(tab)]] = tab.to_json()
            layers[name] = keys[id(tab)]
        return {"format": FORMAT, "fingerprint": self.meta.get("fingerprint"), "meta": self.meta,
                "remainder_ms": self.remainder_ms, "tables": tables, "layers": layers}

    @classmethod
    def from_json(cls, graph: LayerGraph, obj: Any) -> LatencyModel:
        """Rebuild from :meth:`to_json`; any malformation raises :class:`AmcError`."""
        try:
            if obj.get("format") != FORMAT:
                raise AmcError(f"format {obj.get('format')!r}, not {FORMAT}")
            tables = {k: LayerTable.from_json(v) for k, v in obj["tables"].items()}
            layers = {n: tables[k] for n, k in obj["layers"].items()}
            missing = [n for n in graph.layers if n not in layers]
            if missing:
                raise AmcError(f"no table for layer {missing[0]}")
            return cls(graph, layers, float(obj["remainder_ms"]), obj.get("meta") or {})
        except AmcError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise AmcError(f"{type(e).__name__}: {e}") from e


# ---------------------------------------------------------------------- fingerprint and cache

def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where latency tables are kept: ``cache_dir``, else ``$AMC_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/amc``, else ``~/.cache/amc``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("AMC_CACHE_DIR"):
        return Path(os.environ["AMC_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "amc"
    return Path.home() / ".cache" / "amc"


def cpu_name() -> str:
    """The CPU model (``model name`` in /proc/cpuinfo), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def runtime_version(runtime: str) -> str:
    if runtime == "torch":
        import torch

        return torch.__version__
    if runtime == "ort":
        try:
            import onnxruntime
        except ImportError as e:
            raise AmcError("the ort runtime needs onnxruntime and onnx: pip install 'amc[export]'") from e
        return onnxruntime.__version__
    raise AmcError(f"runtime must be 'torch' or 'ort', got {runtime!r}")


def make_fingerprint(runtime: str, batch: int, threads: int, shapes: Any) -> dict:
    """What a table is valid for. ``shapes`` is anything JSON-serialisable that pins the
    layers (names, shapes, what follows them, the grids); only its hash is kept."""
    digest = hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:16]
    return {"format": FORMAT, "cpu": cpu_name(), "runtime": runtime, "runtime_version": runtime_version(runtime),
            "threads": int(threads), "batch": int(batch), "shapes": digest}


def fingerprint_id(fp: Mapping[str, Any]) -> str:
    """A short hash of a whole fingerprint (for config.json and best_policy.json)."""
    return hashlib.sha256(json.dumps(dict(fp), sort_keys=True).encode()).hexdigest()[:16]


def cache_path(root: Path, fp: Mapping[str, Any]) -> Path:
    """One file per runtime, batch, threads and model shapes; the CPU and the runtime's
    version live inside it, so a table made elsewhere is found, seen to be foreign, and rebuilt."""
    return root / f"latency-{fp['runtime']}-b{fp['batch']}-t{fp['threads']}-{fp['shapes']}.json"


def _warn(message: str) -> None:
    # one line on stderr, in the CLI's "error: ..." style (warnings.warn would add a source line)
    print(f"warning: {message}", file=sys.stderr)


def load_cached(path: Path, fp: Mapping[str, Any], graph: LayerGraph) -> LatencyModel | None:
    """The cached model at ``path``, or None (with a one-line warning on stderr) when the file
    is corrupt or was made for another fingerprint; None silently when there is no file."""
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        _warn(f"latency table {path} is corrupt ({type(e).__name__}); rebuilding it")
        return None
    if not isinstance(obj, dict):
        _warn(f"latency table {path} is corrupt (not a JSON object); rebuilding it")
        return None
    if obj.get("fingerprint") != dict(fp):
        theirs = obj.get("fingerprint")
        diff = [k for k in fp if not isinstance(theirs, dict) or theirs.get(k) != fp[k]]
        _warn(f"latency table {path} was made for another {', '.join(diff) or 'fingerprint'}; rebuilding it")
        return None
    try:
        return LatencyModel.from_json(graph, obj)
    except AmcError as e:
        _warn(f"latency table {path} is corrupt ({e}); rebuilding it")
        return None


@contextlib.contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """Held while one table is loaded or built: a second process that wants the same table
    (searches started together) waits for the first to write it, then loads it, instead of
    timing its own while the first one times (each under the other's load) and overwriting it.
    ``filelock`` on ``PATH.lock``; a cache folder that cannot be written goes unlocked."""
    from filelock import FileLock, Timeout

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{path}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"note: another process is building the latency table {path}; waiting for it", file=sys.stderr)
            lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


def save_cached(path: Path, model: LatencyModel) -> None:
    """Write atomically; an unwritable cache folder costs a warning, not the run."""
    try:
        atomic_write_json(path, model.to_json())
    except AmcError as e:
        _warn(f"cannot cache the latency table: {e}")

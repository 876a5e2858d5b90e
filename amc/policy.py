"""Pruning policies on disk: one preserve ratio (and kept-channel count) per prunable layer.

The same JSON serves ``best_policy.json`` from ``amc search`` and ``amc prune --policy``:

    {"layers": [{"group": 0, "layer": "layer1.0.conv2", "channels": 16, "kept": 8, "ratio": 0.5}, ...],
     "flops_ratio": 0.49, ...}

``kept`` wins over ``ratio`` when both are present. A bare list of ratios is accepted too.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from amc.budget import round_channels
from amc.checkpoint import atomic_write_json, read_json
from amc.errors import AmcError


def policy_dict(pruner, counts: Sequence[int], **extra: Any) -> dict:
    """A JSON-ready policy: per-layer ratios and kept/total channels, then FLOPs and params."""
    d = pruner.describe(counts)
    layers = [{"group": l["group"], "layer": l["layer"], "channels": l["channels"], "kept": l["kept"],
               "ratio": round(l["ratio"], 6)} for l in d["layers"]]
    predicted = {k: d[k] for k in ("latency_ms", "latency_ratio") if k in d}  # with a latency table
    return {"layers": layers, "flops": d["flops"], "params": d["params"],
            "flops_ratio": d["flops_ratio"], "params_ratio": d["params_ratio"], **predicted, **extra}


def write_policy(path: str | Path, pruner, counts: Sequence[int], **extra: Any) -> dict:
    d = policy_dict(pruner, counts, **extra)
    atomic_write_json(path, d)
    return d


def parse_policy(obj: Any, pruner, channel_round: int = 1, source: str = "policy") -> list[int]:
    """Kept counts per group from a policy object (dict with ``layers``, dict with ``ratios``, or list)."""
    if isinstance(obj, dict) and "layers" in obj:
        entries = obj["layers"]
    elif isinstance(obj, dict) and "ratios" in obj:
        entries = obj["ratios"]
    else:
        entries = obj
    if not isinstance(entries, list):
        raise AmcError(f"{source}: expected a list of layers or ratios")
    groups = pruner.graph.groups
    if len(entries) != len(groups):
        raise AmcError(f"{source} has {len(entries)} layers but the model has {len(groups)} prunable layers")
    counts = []
    for g, e in zip(groups, entries):
        if isinstance(e, dict):
            if "layer" in e and e["layer"] != g.layer:
                raise AmcError(f"{source}: layer {e['layer']!r} does not match the model's layer {g.layer!r}")
            if "kept" in e:
                k = e["kept"]
                if not isinstance(k, int) or isinstance(k, bool) or not (1 <= k <= g.channels):
                    raise AmcError(f"{source}: layer {g.layer}: kept must be an integer in [1, {g.channels}], got {k!r}")
                counts.append(k)
                continue
            e = e.get("ratio")
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or not (0.0 < e <= 1.0):
            raise AmcError(f"{source}: layer {g.layer}: preserve ratio must be in (0, 1], got {e!r}")
        counts.append(round_channels(float(e), g.channels, g.step(channel_round)))
    return counts


def load_policy(path: str | Path, pruner, channel_round: int = 1) -> list[int]:
    return parse_policy(read_json(path), pruner, channel_round, source=str(path))

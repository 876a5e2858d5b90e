"""AMC's 11-feature layer embedding (paper §3.1; docs/method.md#state-the-11-features).

``(t, n, c, h, w, stride, k, FLOPs[t], reduced, rest, a_{t-1})`` for layer t, the layer
whose input channels step t prunes (the group's first consumer):

- t: step index; n, c: that layer's output and input channels; h, w: its input map size;
  stride, k: its stride and kernel size; FLOPs[t]: the MACs of the group's consumer layers.
  These static columns are min-max scaled over the prunable layers (a constant column is 0).
- reduced: MACs already removed by steps < t, as a fraction of the original total.
- rest: MACs of the consumer layers of steps > t, as a fraction of the original total.
- a_{t-1}: the preserve ratio actually applied at step t-1 (1.0 at t = 0: nothing pruned yet).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from amc.budget import ResourceModel
from amc.graph import LayerGraph

FEATURES = ("t", "n", "c", "h", "w", "stride", "k", "flops", "reduced", "rest", "a_prev")


def min_max(col: np.ndarray) -> np.ndarray:
    lo, hi = col.min(), col.max()
    return np.zeros_like(col) if hi == lo else (col - lo) / (hi - lo)


class LayerEmbedding:
    """Builds the observation for each step of an episode."""

    def __init__(self, graph: LayerGraph, flops: ResourceModel, layer_costs: Sequence[float] | None = None) -> None:
        """``flops`` is the resource of ``reduced``; ``layer_costs`` replace the consumers' MACs
        in ``FLOPs[t]`` and ``rest`` (a latency budget gives each group's predicted latency)."""
        self.flops = flops
        rows = []
        for g in graph.groups:
            li = graph.layers[g.layer]
            layer_flops = sum(graph.layers[n].macs() for n in g.consumers) if layer_costs is None \
                else layer_costs[g.index]
            rows.append([g.index, li.cout, li.cin, li.in_hw[0], li.in_hw[1], li.stride, li.k[0], layer_flops])
        self.raw = np.asarray(rows, dtype=np.float64)
        self.static = np.stack([min_max(c) for c in self.raw.T], axis=1)
        layer_flops = self.raw[:, 7]
        total = float(flops.full)
        # FLOPs of the layers after t: a suffix sum, computed once
        self.rest = (np.cumsum(layer_flops[::-1])[::-1] - layer_flops) / total

    def __call__(self, t: int, counts: Sequence[int], a_prev: float) -> np.ndarray:
        """The embedding of step ``t``, given the counts decided so far (later groups full)."""
        reduced = 1.0 - self.flops(counts) / self.flops.full
        return np.concatenate([self.static[t], [reduced, self.rest[t], a_prev]]).astype(np.float32)

"""Physically slim models: new, smaller tensors for a choice of kept channels per group.

Written by hand for speed: the search builds one slim model per episode, and slicing the
known modules with ``index_select`` needs no re-tracing (Torch-Pruning found the coupling
once, in :mod:`amc.graph`).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from amc.graph import LayerGraph


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.contiguous(), requires_grad=True)


def slim_model(model: nn.Module, graph: LayerGraph, keep: Sequence[torch.Tensor],
               weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` that keeps channels ``keep[g]`` of each group ``g``.

    Args:
        model: the original model (not modified).
        graph: its layer graph.
        keep: for each group, the sorted indices of the channels kept.
        weights: optional replacement full-size weights (e.g. reconstructed), by layer name.
    """
    slim = copy.deepcopy(model)
    weights = weights or {}
    for name, li in graph.layers.items():
        m = slim.get_submodule(name)
        w = weights.get(name, m.weight.data)
        in_idx = graph.groups[li.in_group].keep_for(name, keep[li.in_group]) if li.in_group is not None else None
        out_idx = keep[li.out_group] if li.out_group is not None else None
        if li.kind == "dwconv":
            if in_idx is None:
                continue
            m.weight = _param(w.index_select(0, in_idx))
            if m.bias is not None:
                m.bias = _param(m.bias.data.index_select(0, in_idx))
            m.in_channels = m.out_channels = m.groups = len(in_idx)
            continue
        if out_idx is not None:
            w = w.index_select(0, out_idx)
            if m.bias is not None:
                m.bias = _param(m.bias.data.index_select(0, out_idx))
        if in_idx is not None:
            w = _select_inputs(w, in_idx, getattr(m, "groups", 1))
        if out_idx is not None or in_idx is not None or name in weights:
            m.weight = _param(w)
        if li.kind == "linear":
            m.out_features, m.in_features = w.shape[0], w.shape[1]
        else:
            m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
    for name, (_, g) in graph.norms.items():
        if g is None:
            continue
        bn = slim.get_submodule(name)
        idx = graph.groups[g].keep_for(name, keep[g])
        bn.weight = _param(bn.weight.data.index_select(0, idx))
        bn.bias = _param(bn.bias.data.index_select(0, idx))
        if bn.running_mean is not None:
            bn.running_mean = bn.running_mean.index_select(0, idx)
            bn.running_var = bn.running_var.index_select(0, idx)
        bn.num_features = len(idx)
    return slim


def _select_inputs(w: torch.Tensor, in_idx: torch.Tensor, groups: int) -> torch.Tensor:
    """``w``'s input channels ``in_idx``. A grouped conv's weight is (n, c / groups, ...): its
    block g of outputs reads block g of the inputs, and ``in_idx`` keeps an equal number in
    each block (:func:`amc.selection.top_k`), so each block of rows takes its own columns."""
    if groups == 1:
        return w.index_select(1, in_idx)
    size = w.shape[1]  # inputs per block
    local = in_idx.view(groups, -1) - torch.arange(groups).view(-1, 1) * size
    blocks = w.reshape(groups, w.shape[0] // groups, size, *w.shape[2:])
    index = local.view(groups, 1, -1, *([1] * (w.ndim - 2))).expand(-1, blocks.shape[1], -1, *w.shape[2:])
    return blocks.gather(2, index).reshape(w.shape[0], local.shape[1], *w.shape[2:])


def masked_model(model: nn.Module, graph: LayerGraph, keep: Sequence[torch.Tensor],
                 weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A full-size copy whose consumers ignore the pruned channels (zeroed input columns).

    It computes what :func:`slim_model` computes; the tests hold the two against each other.
    """
    masked = copy.deepcopy(model)
    weights = weights or {}
    for g in graph.groups:
        for name in g.consumers:
            m = masked.get_submodule(name)
            w = weights.get(name, m.weight.data).clone()
            drop = torch.ones(g.channels, dtype=torch.bool)
            drop[g.keep_for(name, keep[g.index])] = False  # past a channel shuffle, in the order it reads them
            groups = getattr(m, "groups", 1)  # a grouped conv's block g of outputs reads block g of the inputs
            w.view(groups, w.shape[0] // groups, *w.shape[1:])[drop.view(groups, 1, -1).expand(
                -1, w.shape[0] // groups, -1)] = 0
            m.weight = _param(w)
    for name, w in weights.items():
        if not any(name in g.consumers for g in graph.groups):
            masked.get_submodule(name).weight = _param(w.clone())
    return masked


def channel_plan(graph: LayerGraph, counts: Sequence[int]) -> list[dict]:
    """Per group: the layer name and the kept/total channels, as stored in checkpoints."""
    return [{"group": g.index, "layer": g.layer, "producers": g.producers, "channels": g.channels,
             "kept": int(counts[g.index])} for g in graph.groups]

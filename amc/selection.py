"""Channel selection criteria: which channels of a group to keep
(docs/method.md#channel-selection-and-reconstruction).

The default, ``l1``, is AMC's: score each channel by the L1 norm of the consumers' weight
slices that read it (summed over outputs and kernel). Criteria are plain functions of the
original model and the group, registered in :data:`CRITERIA`, so new ones plug in by name.
``greedy-ls`` (:mod:`amc.greedy_selection`) also reads the calibration data.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from amc.errors import AmcError
from amc.graph import ChannelGroup
from amc.spec import DATA_CRITERIA

Criterion = Callable[[nn.Module, ChannelGroup], torch.Tensor]


def _in_slices(m: nn.Module) -> torch.Tensor:
    """|W| summed over everything but the input channel: conv (n, c / groups, kh, kw) or linear (n, c).
    A grouped conv's block g of outputs reads block g of the inputs."""
    w = m.weight.detach().abs()
    groups = getattr(m, "groups", 1)
    n, c = w.shape[0], w.shape[1]
    return w.reshape(groups, n // groups, c, -1).sum((1, 3)).reshape(groups * c)


def l1_consumer(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    return sum(group.producer_order(n, _in_slices(model.get_submodule(n)).double()) for n in group.consumers)


def l1_producer(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """L1 norm of the producers' output filters (Li et al., 2017), for comparison."""
    return sum(model.get_submodule(n).weight.detach().abs().reshape(group.channels, -1).sum(1).double()
               for n in group.producers)


CRITERIA: dict[str, Criterion] = {"l1": l1_consumer, "l1-producer": l1_producer}


def get_criterion(name: str) -> Criterion | None:
    """The weight-only criterion ``name``; None for a data criterion (scored after calibration)."""
    if name in DATA_CRITERIA:
        return None
    if name not in CRITERIA:
        raise AmcError(f"unknown channel criterion {name!r}; choose one of {', '.join([*CRITERIA, *DATA_CRITERIA])}")
    return CRITERIA[name]


def top_k(scores: torch.Tensor, k: int, unit: int = 1) -> torch.Tensor:
    """Indices of the ``k`` highest scores, in increasing index order (ties: lower index).

    With ``unit`` > 1 (a set read or written by grouped convs) the channels form ``unit``
    equal blocks and each block keeps its own ``k / unit`` best, so every group of the convs
    keeps the same width; ``k`` must then be a multiple of ``unit``.
    """
    if unit > 1:
        if k % unit or len(scores) % unit:
            raise AmcError(f"{k} of {len(scores)} channels cannot be kept in {unit} equal blocks")
        size = len(scores) // unit
        blocks = scores.reshape(unit, size)
        order = torch.argsort(blocks, dim=1, descending=True, stable=True)[:, :k // unit]
        return (torch.sort(order, dim=1).values + torch.arange(unit).view(-1, 1) * size).reshape(-1)
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    return torch.sort(order).values

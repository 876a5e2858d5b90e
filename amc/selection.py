"""Channel selection criteria: which channels of a group to keep
(docs/method.md#channel-selection-and-reconstruction).

The default, ``l1``, is AMC's: score each channel by the L1 norm of the consumers' weight
slices that read it (summed over outputs and kernel). Criteria are plain functions of the
original model and the group, registered in :data:`CRITERIA`, so new ones plug in by name.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from amc.errors import AmcError
from amc.graph import ChannelGroup

Criterion = Callable[[nn.Module, ChannelGroup], torch.Tensor]


def _in_slices(w: torch.Tensor) -> torch.Tensor:
    # conv (n, c, kh, kw) or linear (n, c): |W| summed over everything but the input channel
    return w.detach().abs().transpose(0, 1).reshape(w.shape[1], -1).sum(1)


def l1_consumer(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    return sum(_in_slices(model.get_submodule(n).weight).double() for n in group.consumers)


def l1_producer(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """L1 norm of the producers' output filters (Li et al., 2017), for comparison."""
    return sum(model.get_submodule(n).weight.detach().abs().reshape(group.channels, -1).sum(1).double()
               for n in group.producers)


CRITERIA: dict[str, Criterion] = {"l1": l1_consumer, "l1-producer": l1_producer}


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise AmcError(f"unknown channel criterion {name!r}; choose one of {', '.join(CRITERIA)}")
    return CRITERIA[name]


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores, in increasing index order (ties: lower index)."""
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    return torch.sort(order).values

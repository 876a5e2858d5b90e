"""A built pruning problem: what :meth:`amc.spec.PruneSpec.build` returns, built once.

The layer graph, the channel scores and the cached least-squares statistics live in the
:class:`~amc.pruner.ChannelPruner`, so nothing is re-traced or re-calibrated per episode
(docs/method.md#channel-selection-and-reconstruction).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from amc.data import DataSplits, ImageSet
from amc.models import ModelSpec
from amc.pruner import ChannelPruner

if TYPE_CHECKING:
    from amc.spec import PruneSpec


@dataclass
class Problem:
    """A spec with its data, its base model and its pruner."""

    spec: PruneSpec
    pruner: ChannelPruner
    splits: DataSplits
    model_spec: ModelSpec
    weights: str | None
    """The weights file the base model was loaded from (None: random initialisation)."""
    bn_batches: list[torch.Tensor] = field(default_factory=list)
    """Calibration images for adaptive BN (``spec.bn_recal`` batches; empty: off)."""

    @property
    def model(self) -> nn.Module:
        """The unpruned base model (the pruner's own: evaluate a copy of it, never move it)."""
        return self.pruner.model

    @property
    def reward_set(self) -> ImageSet:
        return self.splits.reward

    def prune(self, counts: list[int]) -> nn.Module:
        """The slim model for ``counts``, reconstructed and BN-recalibrated as the spec says."""
        from amc.bn_recal import recalibrate_bn

        slim = self.pruner.prune(counts, reconstruct=self.spec.reconstruct)
        if self.bn_batches:
            recalibrate_bn(slim, self.bn_batches)
        return slim

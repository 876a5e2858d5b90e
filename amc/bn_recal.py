"""Adaptive BN: re-estimate the BatchNorm statistics of a pruned model before scoring it.

A pruned (and reconstructed) model still holds the running mean and variance its BatchNorm
layers learned on the unpruned network; once channels are removed upstream, the activations
those layers see have other statistics. EagleEye (Li et al., ECCV 2020, "adaptive BN") showed
that re-estimating them on a few training batches makes the score of an un-fine-tuned pruned
model a better predictor of its accuracy after fine-tuning. See ``docs/method.md``.

:func:`recalibrate_bn` resets every BatchNorm's running statistics and re-estimates them as a
cumulative average (``momentum=None``) over the given batches, with the BatchNorm layers in
train mode and everything else in eval mode, without gradients. It changes BN buffers only
(``running_mean``, ``running_var``, ``num_batches_tracked``): no weight, no other buffer.

The batches must come from the calibration part of the training split (training minus the
reward set): :meth:`amc.data.DataSplits.bn_batches`. Never the reward set (it scores the
policy) nor the test set.

This module is part of the engine: it imports torch only.
"""
from __future__ import annotations

import itertools
from typing import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

Batch = torch.Tensor | tuple | list


def bn_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
            and m.running_mean is not None and m.running_var is not None]


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Batch], device: torch.device | str | None = None) -> nn.Module:
    """Reset and re-estimate the running statistics of every BatchNorm of ``model``, in place.

    Args:
        model: the (pruned, slim) model; left in eval mode.
        batches: input batches, tensors or ``(images, labels)`` pairs (labels are ignored);
            from the calibration split (:meth:`amc.data.DataSplits.bn_batches`).
        device: where the forward passes run (None: where the model's parameters are).
            The model is not moved; pass the device it is on.

    Returns:
        ``model``, with BN statistics equal to the average of the per-batch statistics
        (the BN layers' ``momentum`` is set to None for the passes and restored afterwards).

    A model without BatchNorm is left untouched (no forward pass is run). Raises ValueError,
    before changing anything, when there are BN layers but no batch. If a forward pass fails,
    the BN statistics and momenta are put back as they were and the error is raised.
    """
    bns = bn_layers(model)
    if not bns:
        model.eval()
        return model
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise ValueError("recalibrate_bn got no batch: nothing to re-estimate the BN statistics from")
    dev = torch.device(device) if device is not None else _device_of(model)
    saved = [(m, m.momentum, m.running_mean.clone(), m.running_var.clone(),
              None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in bns]
    try:
        model.eval()  # dropout and any other train-time behaviour stay off
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch weighs the same
            m.train()
        for batch in itertools.chain([first], it):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(dev))
    except BaseException:
        for m, momentum, mean, var, count in saved:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            if count is not None:
                m.num_batches_tracked.copy_(count)
        raise
    finally:
        for m, momentum, *_ in saved:
            m.momentum = momentum
        model.eval()
    return model

"""A pruning problem from plain arguments: model, weights, dataset, reward set, calibration.

This is what ``gymnasium.make("amc/ChannelPruning-v0", model="plain20", dataset=...)`` and
``amc search`` build before the first episode, once: the layer graph, the channel scores
and the cached least-squares statistics (spec §4) all live in the :class:`ChannelPruner`,
so no episode re-traces or re-calibrates anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from amc.data import DataSplits, ImageSet, load_splits
from amc.errors import AmcError
from amc.loading import resolve_model
from amc.pruner import ChannelPruner


@dataclass
class PruningProblem:
    """Everything an episode needs, built once."""

    pruner: ChannelPruner
    reward_set: ImageSet
    splits: DataSplits | None = None
    model_spec: dict = field(default_factory=dict)
    weights: str | None = None


def load_problem(model: str = "plain20", weights: str | None = None, dataset: str = "fashion-mnist",
                 data_dir: str | None = None, width: float | None = None, reward_set_size: int = 5000,
                 split_seed: int = 0, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 image_size: int = 224, calib_batches: int = 60, calib_batch_size: int = 50,
                 points_per_image: int = 10, reconstruct: bool = True, coupled: str = "skip",
                 criterion: str = "l1", seed: int = 0, progress: bool = False,
                 max_cache_mb: float | None = None) -> PruningProblem:
    """Load data and model, and build the pruner with its calibration cache.

    Args:
        model: zoo name, ``tv:NAME`` or ``path/to/file.py:factory`` (see :mod:`amc.models`).
        weights: a state_dict file; zoo models default to the shipped weights.
        dataset: ``fashion-mnist``, ``cifar10`` or ``imagefolder:PATH``.
        data_dir: where the dataset lies.
        width: width multiplier of a zoo model.
        reward_set_size: images held out of the training split for the reward (spec §7).
        split_seed: seed of that split.
        mean, std, image_size: data overrides, as for every ``amc`` command.
        calib_batches, calib_batch_size: training images for reconstruction (official: 60 x 50).
        points_per_image: sampled output positions per calibration image (official: 10).
        reconstruct: False skips calibration (no least-squares refit in episodes).
        coupled: ``skip`` or ``shared`` for residual-tied channels.
        criterion: channel-selection criterion.
        seed: seed of the calibration images and sampled positions.
        progress: show the calibration progress bar.
        max_cache_mb: refuse (before calibrating) when the least-squares cache would exceed this.
    """
    if calib_batches < 1 or calib_batch_size < 1:
        raise AmcError(f"calibration needs at least one batch of one image, got {calib_batches} x {calib_batch_size}")
    if points_per_image < 1:
        raise AmcError(f"--points-per-image must be >= 1, got {points_per_image}")
    splits = load_splits(dataset, data_dir, split_seed, reward_set_size, mean, std, image_size)
    net, spec, weights_path = resolve_model(model, weights, splits.info, width)
    net = net.cpu().eval()
    calibration = splits.calibration_batches(calib_batches, calib_batch_size, seed) if reconstruct else None
    pruner = ChannelPruner(net, splits.train.shape, calibration, coupled=coupled, criterion=criterion,
                           points_per_image=points_per_image, seed=seed, progress=progress,
                           max_cache_bytes=None if max_cache_mb is None else int(max_cache_mb * 2**20))
    return PruningProblem(pruner, splits.reward, splits, spec.to_dict(), weights_path)


def reward_tensors(reward_set: ImageSet | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images and labels of a reward set (an ImageSet or a ready ``(x, y)`` pair)."""
    if isinstance(reward_set, ImageSet):
        return reward_set.tensors()
    if isinstance(reward_set, (tuple, list)) and len(reward_set) == 2:
        x, y = reward_set
        x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
        if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
            raise AmcError(f"reward set must be images (N, C, H, W) and labels (N,), "
                           f"got {tuple(x.shape)} and {tuple(y.shape)}")
        return x, y
    raise AmcError(f"reward_set must be an ImageSet or an (images, labels) pair, got {type(reward_set).__name__}")

"""The channel pruner: AMC's environment without the reinforcement learning.

:class:`ChannelPruner` holds what a search needs once (layer graph, FLOPs model, channel
scores, cached normal equations) and turns per-group kept counts into a slim, reconstructed
model. The Gymnasium environment in ``envs/`` drives it one step per group.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import nn

from amc.budget import PruningState, ResourceModel, group_counts, round_channels
from amc.embedding import LayerEmbedding
from amc.errors import AmcError
from amc.graph import LayerGraph, build_layer_graph
from amc.reconstruct import FeatureCache
from amc.selection import get_criterion, top_k
from amc.surgery import channel_plan, masked_model, slim_model


class ChannelPruner:
    """Prunes one trained model to any per-group channel counts.

    Args:
        model: the trained, unpruned model (kept unmodified, in eval mode).
        input_shape: one input's ``(C, H, W)``.
        calibration_batches: training images for reconstruction; None disables it.
        coupled: ``"skip"`` or ``"shared"`` for residual-tied channels (see :mod:`amc.graph`).
        criterion: channel-selection criterion name (see :mod:`amc.selection`).
        points_per_image: sampled output positions per calibration image.
        seed: seed of the calibration sampling.
        max_cache_bytes: refuse, before calibrating, when the least-squares cache would be
            larger (None: no limit). Its size depends on the layers' widths and kernels only,
            not on the number of calibration images or points.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int],
                 calibration_batches: Iterable[torch.Tensor] | None = None, coupled: str = "skip",
                 criterion: str = "l1", points_per_image: int = 10, seed: int = 0, progress: bool = False,
                 max_cache_bytes: int | None = None) -> None:
        self.model = model.eval()
        self.input_shape = tuple(input_shape)
        crit = get_criterion(criterion)
        if crit is None and calibration_batches is None:
            raise AmcError(f"--criterion {criterion} ranks channels by the calibration data: it needs reconstruction "
                           "(drop --no-reconstruct, or choose l1)")
        self._use_graph(build_layer_graph(model, self.input_shape, coupled), crit)
        bad = self._shuffle_mismatches()
        if bad:
            self._use_graph(build_layer_graph(model, self.input_shape, coupled, leave_shuffles=bad), crit)
        if not self.graph.groups:
            why = "; ".join(f"{n}: {r}" for n, r in self.graph.skipped) or "no conv/linear layers"
            raise AmcError(f"the model has no prunable layer ({why})")
        self.embedding = LayerEmbedding(self.graph, self.flops)
        self.latency = None  # a LatencyModel once use_latency() gives one
        self.cache: FeatureCache | None = None
        if calibration_batches is not None:
            need = FeatureCache.estimate_nbytes(model, self.graph)
            if max_cache_bytes is not None and need > max_cache_bytes:
                raise AmcError(f"the least-squares cache would take {_size(need)}, over the limit of "
                               f"{_size(max_cache_bytes)} (--max-cache-mb); raise the limit, or prune "
                               "without reconstruction (--no-reconstruct)")
            self.cache = FeatureCache(model, self.graph, calibration_batches, points_per_image, seed, progress=progress)
        if crit is None:  # a data criterion: scored now that the cache exists (l1 until then, for the shuffle probe)
            from amc.greedy_selection import greedy_ls

            self.scores = [greedy_ls(model, g, self.cache) for g in self.graph.groups]

    def _use_graph(self, graph: LayerGraph, crit) -> None:
        self.graph = graph
        self.flops, self.params = ResourceModel(graph, "flops"), ResourceModel(graph, "params")
        static = crit or get_criterion("l1")
        self.scores = [static(self.model, g) for g in graph.groups]

    def _shuffle_mismatches(self) -> dict[str, str]:
        """The sets through a channel shuffle (a probed reshape) whose slim model does not equal the masked one,
        by first producer, with why (one forward with them all at half width; one per set if
        that differs).

        The channel map of a shuffle is probed on the full model (:mod:`amc.shuffle`); the
        slim model's own shuffle then runs on fewer channels. One written with the channel
        count or group size fixed, instead of read from its input, fails or routes the
        channels elsewhere, and its set is then left alone.
        """
        checked = [g for g in self.graph.groups if g.reshaped]
        x = torch.randn(2, *self.input_shape, generator=torch.Generator().manual_seed(0))
        if not checked or self._slim_mismatch(checked, x) is None:  # all at once first: one forward
            return {}
        return {g.producers[0]: why for g in checked if (why := self._slim_mismatch([g], x))}

    def _slim_mismatch(self, groups: list, x: torch.Tensor) -> str | None:
        counts = [g.channels for g in self.graph.groups]
        for g in groups:
            counts[g.index] = round_channels(0.5, g.channels, g.step(1))
        try:
            with torch.no_grad():
                slim, masked = self.prune(counts, reconstruct=False)(x), self.masked(counts, reconstruct=False)(x)
        except Exception as e:  # a shuffle that reshapes to fixed sizes fails on fewer channels
            return f"the slim model's channel shuffle fails on fewer channels ({type(e).__name__})"
        scale = float(masked.abs().max()) or 1.0
        if slim.shape != masked.shape or float((slim - masked).abs().max()) > 1e-4 * scale:
            return "the slim model's channel shuffle routes the kept channels differently"
        return None

    @property
    def num_layers(self) -> int:
        return len(self.graph.groups)

    def use_latency(self, latency) -> None:
        """Take a latency table (:class:`amc.latency_table.LatencyModel`) as a third resource,
        with an embedding whose resource features are in its units."""
        self.latency = latency
        self.latency_embedding = LayerEmbedding(self.graph, latency, latency.group_ms())

    def resource(self, name: str):
        """The model of resource ``name``: ``flops``, ``params`` or ``latency``."""
        if name == "latency":
            if self.latency is None:
                raise AmcError("a latency budget needs a latency table (PruneSpec.build with latency=True)")
            return self.latency
        return self.flops if name == "flops" else self.params

    def state(self, target: float | None = 0.5, lbound: float = 0.2, channel_round: int = 1,
              resource: str = "flops", fill: bool = False) -> PruningState:
        """A fresh stepwise state with the budget wall on ``resource`` (None: no wall);
        ``fill`` adds the lower wall that makes episodes use the whole budget."""
        return PruningState(self.resource(resource), target, lbound, channel_round, fill)

    def keep_indices(self, counts: Sequence[int]) -> list[torch.Tensor]:
        self._check_counts(counts)
        return [top_k(self.scores[i], int(k), g.unit) for i, (k, g) in enumerate(zip(counts, self.graph.groups))]

    def _check_counts(self, counts: Sequence[int]) -> None:
        if len(counts) != self.num_layers:
            raise AmcError(f"policy has {len(counts)} layers but the model has {self.num_layers} prunable layers")
        for g, k in zip(self.graph.groups, counts):
            if not (1 <= int(k) <= g.channels):
                raise AmcError(f"layer {g.layer}: kept channels must be in [1, {g.channels}], got {k}")
            if int(k) % g.unit:
                raise AmcError(f"layer {g.layer}: kept channels must be a multiple of {g.unit} (its grouped convs' "
                               f"groups), got {k}")

    def reconstructed_weights(self, keep: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.cache is None:
            raise AmcError("reconstruction needs calibration batches")
        out = {}
        for g in self.graph.groups:
            if len(keep[g.index]) == g.channels:
                continue
            for name in g.consumers:
                w = self.model.get_submodule(name).weight.data
                out[name] = self.cache.solve(name, g.keep_for(name, keep[g.index]), w)
        return out

    def prune(self, counts: Sequence[int], reconstruct: bool = True) -> nn.Module:
        """A physically slim copy keeping ``counts[g]`` channels of each group."""
        keep = self.keep_indices(counts)
        weights = self.reconstructed_weights(keep) if reconstruct and self.cache is not None else None
        return slim_model(self.model, self.graph, keep, weights).eval()

    def masked(self, counts: Sequence[int], reconstruct: bool = True) -> nn.Module:
        keep = self.keep_indices(counts)
        weights = self.reconstructed_weights(keep) if reconstruct and self.cache is not None else None
        return masked_model(self.model, self.graph, keep, weights).eval()

    def counts_from_ratios(self, ratios: Sequence[float], channel_round: int = 1) -> list[int]:
        if len(ratios) != self.num_layers:
            raise AmcError(f"policy has {len(ratios)} layers but the model has {self.num_layers} prunable layers")
        for r in ratios:
            if not (isinstance(r, (int, float)) and math.isfinite(r) and 0.0 < r <= 1.0):
                raise AmcError(f"preserve ratios must be in (0, 1], got {r}")
        return group_counts(ratios, self.graph.groups, channel_round)

    def uniform_counts(self, target: float, channel_round: int = 1, resource: str = "flops") -> list[int]:
        """The largest uniform preserve ratio whose ``resource`` (flops, params or predicted
        latency) is at or under ``target`` of the base (a baseline)."""
        name = "FLOPs" if resource == "flops" else resource
        if not (math.isfinite(target) and 0.0 < target <= 1.0):
            raise AmcError(f"{name} target must be in (0, 1], got {target}")
        cost = self.resource(resource)
        lo, hi = 0.0, 1.0
        budget = target * cost.full
        for _ in range(40):
            mid = (lo + hi) / 2
            if cost(self.counts_from_ratios([max(mid, 1e-9)] * self.num_layers, channel_round)) <= budget:
                lo = mid
            else:
                hi = mid
        counts = self.counts_from_ratios([max(lo, 1e-9)] * self.num_layers, channel_round)
        if cost(counts) > budget:
            raise AmcError(f"{name} target {target} is unreachable by uniform pruning of the prunable layers")
        return counts

    def describe(self, counts: Sequence[int]) -> dict:
        out = {"flops": self.flops(counts), "params": self.params(counts),
               "flops_ratio": self.flops(counts) / self.flops.full,
               "params_ratio": self.params(counts) / self.params.full,
               "layers": [{**p, "ratio": p["kept"] / p["channels"]} for p in channel_plan(self.graph, counts)]}
        if self.latency is not None:
            out.update(latency_ms=self.latency(counts), latency_ratio=self.latency(counts) / self.latency.full)
        return out


def _size(nbytes: int) -> str:
    mib = nbytes / 2**20
    return f"{mib:.1f} MiB" if mib >= 1 else f"{nbytes / 1024:.1f} KiB"

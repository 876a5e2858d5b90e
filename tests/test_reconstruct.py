"""Channel selection and least-squares reconstruction (docs/method.md#channel-selection-and-reconstruction).

- Selection: the L1 criterion keeps the channels whose consumer weight slices have the
  largest L1 norms, on weights built so the answer is known.
- Reconstruction: on the calibration data, the refit weight's error is never above the error
  of selection alone (the original weight with the dropped columns zeroed), for a 3x3 conv
  and a Linear consumer; ``FeatureCache.residual`` is checked against a direct computation.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from amc.errors import AmcError
from amc.graph import build_layer_graph
from amc.pruner import ChannelPruner
from amc.reconstruct import FeatureCache
from amc.selection import CRITERIA, get_criterion, l1_consumer, l1_producer, top_k

from helpers import exactly


# --------------------------------------------------------------------------- selection

def conv_conv_linear(c: int = 6) -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, 5, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))


def test_l1_keeps_the_channels_with_the_largest_consumer_slices() -> None:
    model = conv_conv_linear()
    graph = build_layer_graph(model, (2, 8, 8))
    consumer = model[2]
    # input channel j of the consumer has every weight = +-norms[j] / (5 * 9): L1 norm = norms[j]
    norms = torch.tensor([3.0, 0.5, 7.0, 1.0, 6.0, 2.0])
    signs = torch.where(torch.rand(5, 6, 3, 3) < 0.5, -1.0, 1.0)
    with torch.no_grad():
        consumer.weight.copy_(signs * norms.view(1, 6, 1, 1) / 45)
        model[0].weight.copy_(torch.randn_like(model[0].weight))  # the producer plays no part in l1
    group = graph.groups[0]
    assert group.consumers == ["2"]
    scores = l1_consumer(model, group)
    torch.testing.assert_close(scores, norms.double(), rtol=1e-6, atol=1e-6)
    assert top_k(scores, 3).tolist() == [0, 2, 4]  # 3.0, 7.0, 6.0, in index order
    assert top_k(scores, 1).tolist() == [2]
    assert top_k(scores, 6).tolist() == list(range(6))
    pruner = ChannelPruner(model, (2, 8, 8))
    assert pruner.keep_indices([4, 5])[0].tolist() == [0, 2, 4, 5]


def test_l1_sums_over_every_consumer_of_a_group() -> None:
    # a residual-shared group is read by several layers: its score adds their slices
    from amc.models import ModelSpec, build_model

    model = build_model(ModelSpec("resnet20", 1, 10, 0.25))
    graph = build_layer_graph(model, (1, 28, 28), coupled="shared")
    group = next(g for g in graph.groups if g.residual and len(g.consumers) > 2)
    expected = sum(model.get_submodule(n).weight.detach().abs().sum(dim=(0, 2, 3)).double()
                   if model.get_submodule(n).weight.ndim == 4
                   else model.get_submodule(n).weight.detach().abs().sum(0).double() for n in group.consumers)
    torch.testing.assert_close(l1_consumer(model, group), expected)


def test_l1_producer_scores_the_output_filters() -> None:
    model = conv_conv_linear()
    graph = build_layer_graph(model, (2, 8, 8))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(6.0).view(6, 1, 1, 1).expand(6, 2, 3, 3) - 2.5)
    scores = l1_producer(model, graph.groups[0])
    torch.testing.assert_close(scores, (torch.arange(6.0) - 2.5).abs().double() * 18)
    assert top_k(scores, 2).tolist() == [0, 5]


def test_ties_keep_the_lower_index_and_unknown_criteria_are_refused() -> None:
    assert top_k(torch.tensor([1.0, 2.0, 2.0, 1.0]), 1).tolist() == [1]
    assert top_k(torch.tensor([1.0, 1.0, 1.0]), 2).tolist() == [0, 1]
    assert get_criterion("l1") is CRITERIA["l1"]
    with pytest.raises(AmcError, match=exactly("unknown channel criterion 'magic'; choose one of l1, l1-producer, greedy-ls")):
        get_criterion("magic")


# --------------------------------------------------------------------------- reconstruction

def conv_then_linear() -> nn.Module:
    # group 0: conv0 -> conv2 (a 3x3 consumer, with bias); group 1: conv2 -> fc1 (a Linear consumer,
    # with bias); group 2: fc1 -> fc2 (Linear); fc2 is the output
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 16), nn.ReLU(),
                         nn.Linear(16, 10))


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    model = conv_then_linear().eval()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 3, 10, 10, generator=g) for _ in range(4)]
    graph = build_layer_graph(model, (3, 10, 10))
    assert [g.consumers for g in graph.groups] == [["2"], ["6"], ["8"]]
    cache = FeatureCache(model, graph, batches, points_per_image=10, seed=0)
    return model, graph, cache, batches


def selection_only(weight: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    w = torch.zeros_like(weight)
    w[:, kept] = weight[:, kept]
    return w


@pytest.mark.parametrize("layer,group", [("2", 0), ("6", 1), ("8", 2)], ids=["conv3x3", "linear", "linear-2"])
def test_refit_error_is_at_most_the_selection_error(fitted, layer: str, group: int) -> None:
    model, graph, cache, _ = fitted
    weight = model.get_submodule(layer).weight.detach()
    channels = graph.groups[group].channels
    scores = l1_consumer(model, graph.groups[group])
    gen = torch.Generator().manual_seed(group)
    # residual() is ||XW - Y||^2 - ||Y||^2, and the original weight fits Y exactly, so this is
    # ||Y||^2: the scale of the ridge's (relative 1e-6) and float32 products' rounding
    scale = -cache.residual(layer, torch.arange(channels), weight)
    assert scale > 0
    for k in range(1, channels):
        for kept in (top_k(scores, k), torch.sort(torch.randperm(channels, generator=gen)[:k]).values):
            refit = cache.solve(layer, kept, weight)
            assert refit.shape == weight.shape
            dropped = torch.ones(channels, dtype=torch.bool)
            dropped[kept] = False
            assert (refit[:, dropped] == 0).all()
            err_refit = cache.residual(layer, kept, refit)
            err_select = cache.residual(layer, kept, selection_only(weight, kept))
            assert err_refit <= err_select + 1e-6 * scale, (k, err_refit, err_select)
    # the refit strictly helps when a good share of the channels is dropped
    kept = top_k(scores, channels // 2)
    assert cache.residual(layer, kept, cache.solve(layer, kept, weight)) < \
        cache.residual(layer, kept, selection_only(weight, kept))


@pytest.mark.parametrize("layer,group", [("2", 0), ("6", 1)])
def test_keeping_every_channel_refits_the_original_weight(fitted, layer: str, group: int) -> None:
    # the targets are the outputs minus the kept bias, so the bias is not fitted twice
    model, graph, cache, _ = fitted
    weight = model.get_submodule(layer).weight.detach()
    refit = cache.solve(layer, torch.arange(graph.groups[group].channels), weight)
    torch.testing.assert_close(refit, weight, rtol=1e-3, atol=1e-4)


def test_residual_is_the_squared_error_up_to_a_constant_for_a_linear(fitted) -> None:
    # a Linear consumer sees every row, so X and Y can be rebuilt directly
    model, graph, cache, batches = fitted
    layer = model[6]
    with torch.no_grad():
        x = torch.cat([model[:6](b) for b in batches]).double()
    y = x @ layer.weight.detach().double().T  # outputs without the bias
    assert cache.rows["6"] == len(x) == 64
    torch.testing.assert_close(cache.xtx["6"], x.T @ x, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(cache.xty["6"], x.T @ y, rtol=1e-5, atol=1e-4)
    w = torch.randn(16, 12, dtype=torch.float64)
    direct = float(((x @ w.T - y) ** 2).sum() - (y ** 2).sum())
    assert cache.residual("6", torch.arange(12), w) == pytest.approx(direct, rel=1e-6, abs=1e-6)
    # and the refit is the least-squares solution on those rows
    kept = torch.tensor([0, 3, 4, 9])
    ls = torch.linalg.lstsq(x[:, kept], y).solution.T
    torch.testing.assert_close(cache.solve("6", kept, layer.weight.detach())[:, kept].double(), ls,
                               rtol=1e-3, atol=1e-4)


def test_conv_rows_are_sampled_positions(fitted) -> None:
    _, _, cache, _ = fitted
    assert cache.rows["2"] == 4 * 16 * 10  # batches x images x points
    assert cache.xtx["2"].shape == (8 * 9, 8 * 9) and cache.xty["2"].shape == (8 * 9, 12)
    assert cache.nbytes == 8 * sum(d * (d + n) for d, n in ((72, 12), (12, 16), (16, 10)))


def test_reconstruction_lowers_the_pruned_models_output_error(fitted) -> None:
    model, _, _, batches = fitted
    pruner = ChannelPruner(model, (3, 10, 10), batches)
    counts = [4, 6, 8]
    x = torch.cat(batches)
    with torch.no_grad():
        y = model(x)
        err_select = float(((pruner.prune(counts, reconstruct=False)(x) - y) ** 2).mean())
        err_refit = float(((pruner.prune(counts, reconstruct=True)(x) - y) ** 2).mean())
    assert err_refit < err_select


def test_reconstruction_needs_calibration_batches() -> None:
    pruner = ChannelPruner(conv_then_linear(), (3, 10, 10))
    with pytest.raises(AmcError, match=exactly("reconstruction needs calibration batches")):
        pruner.reconstructed_weights(pruner.keep_indices([4, 6, 8]))
    # prune() falls back to selection alone
    assert pruner.prune([4, 6, 8]).get_submodule("2").weight.shape == (6, 4, 3, 3)

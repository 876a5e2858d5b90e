"""AMC's 11-feature layer embedding (paper §3.1; docs/method.md#state-the-11-features), checked against a table worked by hand.

The toy net, on 1x8x8 inputs (3x3 convs padded by 1):

    c1: conv 1->4, 3x3, stride 1   8x8 -> 8x8    MACs 1*4*9*64  = 2304
    c2: conv 4->8, 3x3, stride 2   8x8 -> 4x4    MACs 4*8*9*16  = 4608
    c3: conv 8->6, 1x1             4x4 -> 4x4    MACs 8*6*16    =  768
    pool, fc: linear 6->10                       MACs 6*10      =   60
                                                 total          = 7740

Its prunable groups are c1's, c2's and c3's output channels; step t prunes the input of
the group's consumer ("layer t"): c2, c3 and fc. fc's outputs are the logits.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from amc.budget import PruningState, ResourceModel
from amc.embedding import FEATURES, LayerEmbedding, min_max
from amc.graph import build_layer_graph

TOTAL = 2304 + 4608 + 768 + 60

# (t, n, c, h, w, stride, k, FLOPs[t]) of layers c2, c3, fc; a linear is a 1x1 "conv" on a 1x1 map
RAW = np.array([
    [0, 8, 4, 8, 8, 2, 3, 4608],
    [1, 6, 8, 4, 4, 1, 1, 768],
    [2, 10, 6, 1, 1, 1, 1, 60],
], dtype=np.float64)

# each column min-max scaled over the three rows: (x - min) / (max - min)
STATIC = np.array([
    # t    n    c    h      w      stride k    FLOPs[t]
    [0.0, 0.5, 0.0, 1.0,   1.0,   1.0,   1.0, 1.0],
    [0.5, 0.0, 1.0, 3 / 7, 3 / 7, 0.0,   0.0, (768 - 60) / (4608 - 60)],
    [1.0, 1.0, 0.5, 0.0,   0.0,   0.0,   0.0, 0.0],
])


def toy_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, 1, 1, bias=False), nn.ReLU(),
        nn.Conv2d(4, 8, 3, 2, 1, bias=False), nn.ReLU(),
        nn.Conv2d(8, 6, 1, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10),
    )


@pytest.fixture(scope="module")
def toy():
    graph = build_layer_graph(toy_net(), (1, 8, 8))
    flops = ResourceModel(graph, "flops")
    return graph, flops, LayerEmbedding(graph, flops)


def test_toy_graph_is_what_the_table_assumes(toy) -> None:
    graph, flops, _ = toy
    assert [(g.producers, g.consumers, g.channels) for g in graph.groups] == [
        (["0"], ["2"], 4), (["2"], ["4"], 8), (["4"], ["8"], 6)]
    assert flops.full == TOTAL


def test_raw_and_scaled_static_features(toy) -> None:
    _, _, emb = toy
    assert FEATURES == ("t", "n", "c", "h", "w", "stride", "k", "flops", "reduced", "rest", "a_prev")
    np.testing.assert_array_equal(emb.raw, RAW)
    np.testing.assert_allclose(emb.static, STATIC, rtol=0, atol=1e-12)


def test_embedding_at_the_first_step(toy) -> None:
    _, flops, emb = toy
    s0 = emb(0, flops.full_counts(), 1.0)
    assert s0.shape == (11,) and s0.dtype == np.float32
    # nothing decided yet; the layers after c2 are c3 and fc; no previous action: 1.0
    expected = [*STATIC[0], 0.0, (768 + 60) / TOTAL, 1.0]
    np.testing.assert_allclose(s0, expected, rtol=1e-6, atol=1e-7)


def test_reduced_rest_and_previous_action_after_a_step(toy) -> None:
    _, flops, emb = toy
    state = PruningState(flops, target=None)
    applied = state.step(0.5)  # keep 2 of c1's 4 output channels
    assert applied == 0.5 and state.counts == [2, 8, 6]
    # c1 now computes 2 channels (1*2*9*64 = 1152 MACs) and c2 reads 2 (2*8*9*16 = 2304)
    after = 1152 + 2304 + 768 + 60
    assert flops(state.counts) == after
    s1 = emb(1, state.counts, applied)
    expected = [*STATIC[1], 1 - after / TOTAL, 60 / TOTAL, 0.5]
    np.testing.assert_allclose(s1, expected, rtol=1e-6, atol=1e-7)

    applied = state.step(0.25)  # keep 2 of c2's 8
    assert state.counts == [2, 2, 6]
    # c2: 2*2*9*16 = 576, c3: 2*6*16 = 192
    after = 1152 + 576 + 192 + 60
    s2 = emb(2, state.counts, applied)
    np.testing.assert_allclose(s2, [*STATIC[2], 1 - after / TOTAL, 0.0, 0.25], rtol=1e-6, atol=1e-7)


def test_every_feature_is_in_the_unit_interval_for_a_real_model() -> None:
    from amc.models import ModelSpec, build_model

    graph = build_layer_graph(build_model(ModelSpec("mobilenet", 1, 10, 0.125)), (1, 28, 28))
    flops = ResourceModel(graph, "flops")
    emb = LayerEmbedding(graph, flops)
    state = PruningState(flops, target=0.5)
    a_prev = 1.0
    g = torch.Generator().manual_seed(0)
    while not state.done:
        s = emb(state.t, state.counts, a_prev)
        assert np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()
        assert s[0] == pytest.approx(state.t / (len(graph.groups) - 1))
        a_prev = state.step(float(torch.rand(1, generator=g)))


def test_min_max_maps_a_constant_column_to_zero() -> None:
    np.testing.assert_array_equal(min_max(np.array([3.0, 3.0, 3.0])), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(min_max(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])

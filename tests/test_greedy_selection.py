"""``--criterion greedy-ls``: channels dropped in the order that least raises the refit error
(docs/method.md#channel-selection-and-reconstruction).

- Exactness: the elimination order is the one a brute-force greedy finds by refitting every
  candidate with the cache's own solver, for a 3x3 conv and a Linear consumer.
- What it is for: of two copies of one channel it drops a copy first, which l1 keeps longest.
- Generality: on grouped convs and a channel shuffle, every score is a distinct step, the
  blocks stay equal, and the slim model equals the masked one.
- Bad input: without calibration data it is refused with one readable line.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from amc.errors import AmcError
from amc.graph import build_layer_graph
from amc.greedy_selection import greedy_ls
from amc.models import ModelSpec, build_model
from amc.pruner import ChannelPruner
from amc.reconstruct import FeatureCache
from amc.selection import get_criterion, l1_consumer, top_k
from amc.spec import PruneSpec

from helpers import FIXTURES, TINY_NET, exactly, in_process_error
from test_grouped import _random_counts
from test_reconstruct import conv_then_linear, fitted  # noqa: F401 (fitted: a fixture, shared)
from test_surgery import INPUT, assert_same_outputs, calibration, randomize_bn


def brute_force_order(model: nn.Module, cache: FeatureCache, layer: str, channels: int) -> list[int]:
    """Greedy by refitting: each step drops the channel whose removal leaves the least error."""
    weight = model.get_submodule(layer).weight.detach()
    alive, order = list(range(channels)), []
    while len(alive) > 1:
        def error(c: int) -> float:
            kept = torch.tensor([a for a in alive if a != c])
            return cache.residual(layer, kept, cache.solve(layer, kept, weight))
        c = min(alive, key=error)
        order.append(c)
        alive.remove(c)
    return order + alive


@pytest.mark.parametrize("layer,group", [("2", 0), ("6", 1)], ids=["conv3x3", "linear"])
def test_the_order_is_brute_force_greedy_by_refit(fitted, layer: str, group: int) -> None:
    model, graph, cache, _ = fitted
    channels = graph.groups[group].channels
    scores = greedy_ls(model, graph.groups[group], cache, chunk=channels + 1)  # one channel per step
    assert sorted(scores.tolist()) == list(range(channels))
    assert torch.argsort(scores).tolist() == brute_force_order(model, cache, layer, channels)


def test_errors_are_weighed_as_the_following_batchnorm_scales_them() -> None:
    # conv -> BN: the order equals the one for the same conv with the BN's scale folded into its weights
    torch.manual_seed(0)
    bn_model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
                             nn.BatchNorm2d(12), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 6))
    randomize_bn(bn_model, 0)
    with torch.no_grad():
        bn_model[3].weight[:6] *= 30  # a strong imbalance between the outputs' scales
    bn = bn_model[3]
    scale = (bn.weight.detach() / (bn.running_var + bn.eps).sqrt()).double()
    folded = conv_then_linear()
    with torch.no_grad():
        folded[0].load_state_dict(bn_model[0].state_dict())
        folded[2].weight.copy_(bn_model[2].weight * scale.float().view(-1, 1, 1, 1))
        folded[2].bias.copy_(bn_model[2].bias * scale.float())
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(32, 3, 10, 10, generator=g) for _ in range(4)]

    def order(model: nn.Module, weigh: bool = True) -> list[int]:
        graph = build_layer_graph(model.eval(), (3, 10, 10))
        cache = FeatureCache(model, graph, batches, 10, 0)
        if model is bn_model:
            assert set(cache.out_scale) == {"2"}  # only the conv a BatchNorm reads
            torch.testing.assert_close(cache.out_scale["2"], scale)
        if not weigh:
            cache.out_scale.clear()
        return torch.argsort(greedy_ls(model, graph.groups[0], cache, chunk=9)).tolist()

    weighted = order(bn_model)
    assert weighted == order(folded)
    assert weighted != order(bn_model, weigh=False)


def test_chunks_drop_several_at_once_and_keep_every_score_distinct(fitted) -> None:
    model, graph, cache, _ = fitted
    one = greedy_ls(model, graph.groups[1], cache, chunk=13)
    four = greedy_ls(model, graph.groups[1], cache, chunk=3)  # 12 channels: 4, then 2 ... at a time
    assert sorted(four.tolist()) == list(range(12))
    # the most important channel is the last one left either way
    assert int(torch.argmax(four)) == int(torch.argmax(one))


def test_of_two_copies_of_a_channel_one_goes_first_where_l1_keeps_both() -> None:
    torch.manual_seed(0)
    model = conv_then_linear().eval()
    with torch.no_grad():
        model[0].weight[1] = model[0].weight[0]  # channel 1 is a copy of channel 0
        model[0].bias[1] = model[0].bias[0]
        model[2].weight[:, :2] *= 10  # and the consumer reads both strongly
    g = torch.Generator().manual_seed(1)
    graph = build_layer_graph(model, (3, 10, 10))
    cache = FeatureCache(model, graph, [torch.randn(32, 3, 10, 10, generator=g) for _ in range(4)], 10, 0)
    l1 = l1_consumer(model, graph.groups[0])
    greedy = greedy_ls(model, graph.groups[0], cache, chunk=9)
    assert set(top_k(l1, 2).tolist()) == {0, 1}  # l1 keeps the pair
    assert int(torch.argmin(greedy)) in (0, 1)  # the refit restores a copy from the other: free to drop
    assert len({0, 1} & set(top_k(greedy, 7).tolist())) == 1


@pytest.mark.parametrize("factory", [f"{FIXTURES / 'grouped_net.py'}:factory", "shufflenetv1"],
                         ids=["grouped", "shuffle"])
def test_grouped_convs_and_shuffles_get_distinct_scores_and_exact_slim_models(factory: str) -> None:
    torch.manual_seed(0)
    width = 0.5 if factory == "shufflenetv1" else 1.0
    model = randomize_bn(build_model(ModelSpec(factory, 1, 10, width)), 0)
    pruner = ChannelPruner(model, INPUT, calibration(1, batches=4), criterion="greedy-ls")
    assert any(g.unit > 1 or g.shuffle > 1 for g in pruner.graph.groups)
    for g, s in zip(pruner.graph.groups, pruner.scores):
        assert sorted(s.tolist()) == list(range(g.channels)), g
    x = torch.randn(4, *INPUT, generator=torch.Generator().manual_seed(2))
    for seed in range(2):
        counts = _random_counts(pruner, seed)
        assert_same_outputs(pruner.prune(counts), pruner.masked(counts), x)


def test_a_data_criterion_without_calibration_is_refused(tmp_path: Path, capsys, tiny_data_dir: Path) -> None:
    message = ("--criterion greedy-ls ranks channels by the calibration data: it needs reconstruction "
               "(drop --no-reconstruct, or choose l1)")
    assert get_criterion("greedy-ls") is None
    with pytest.raises(AmcError, match=exactly(message)):
        ChannelPruner(conv_then_linear(), (3, 10, 10), None, criterion="greedy-ls")
    with pytest.raises(AmcError, match=exactly(message)):
        PruneSpec(model="plain20", criterion="greedy-ls", reconstruct=False).validate()
    in_process_error(capsys, message, "prune", "--model", f"{TINY_NET}:factory", "--data-dir", tiny_data_dir,
                     "--criterion", "greedy-ls", "--no-reconstruct", "--policy", "uniform:0.5",
                     "--out", tmp_path / "p")
    assert not (tmp_path / "p").exists()

"""The prunable-layer graph: which channel sets one AMC step prunes, and what each one touches.

One group is the output channels of its producers, the BNs and depthwise convs that carry
them, and the input channels of the convs/linears that read them
(docs/method.md#coupled-channels). Residual-tied sets are left alone by default and shared
with ``coupled="shared"``; anything we cannot slice one-to-one is left alone and reported
with a reason.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from amc.budget import ResourceModel
from amc.errors import AmcError
from amc.flops import count_params
from amc.graph import build_layer_graph
from amc.models import ModelSpec, build_model
from amc.pruner import ChannelPruner

from helpers import FIXTURES, exactly

INPUT = (1, 28, 28)
RESIDUAL_SKIP = "tied to a residual add (left alone; use coupled='shared' to prune as one group)"


def zoo(name: str, width: float) -> nn.Module:
    return build_model(ModelSpec(name, 1, 10, width))


# --------------------------------------------------------------------------- zoo models

def test_plain20_has_one_group_per_conv() -> None:
    graph = build_layer_graph(zoo("plain20", 0.25), INPUT)
    convs = ["conv1"] + [f"layer{s}.{b}.conv{i}" for s in (1, 2, 3) for b in range(3) for i in (1, 2)]
    assert [g.producers for g in graph.groups] == [[c] for c in convs]
    # the last conv's channels reach the classifier through a global pool: one-to-one, so fc reads them
    assert [g.consumers for g in graph.groups] == [[c] for c in convs[1:] + ["fc"]]
    assert [g.channels for g in graph.groups] == [4] * 7 + [8] * 6 + [16] * 6
    assert [g.norms for g in graph.groups][:2] == [["bn1"], ["layer1.0.bn1"]]
    assert not any(g.residual or g.depthwise for g in graph.groups)
    assert graph.skipped == [("fc", "network output (class logits)")]  # fc's own outputs are the logits
    li = graph.layers["layer2.0.conv1"]
    assert (li.cin, li.cout, li.k, li.stride, li.in_hw, li.out_hw) == (4, 8, (3, 3), 2, (28, 28), (14, 14))
    assert (li.in_group, li.out_group) == (6, 7)
    assert [li.order for li in graph.layers.values()] == list(range(len(graph.layers)))


def test_resnet20_skips_residual_channels_by_default() -> None:
    graph = build_layer_graph(zoo("resnet20", 0.25), INPUT)
    # only the block-internal channels: conv1 -> conv2 of each of the nine blocks
    blocks = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    assert [(g.producers, g.consumers) for g in graph.groups] == [([f"{b}.conv1"], [f"{b}.conv2"]) for b in blocks]
    assert graph.skipped == [
        ("conv1, layer1.0.conv2, layer1.1.conv2, layer1.2.conv2", RESIDUAL_SKIP),
        ("layer2.0.conv2, layer2.0.shortcut.0, layer2.1.conv2, layer2.2.conv2", RESIDUAL_SKIP),
        ("layer3.0.conv2, layer3.0.shortcut.0, layer3.1.conv2, layer3.2.conv2", RESIDUAL_SKIP),
        ("fc", "network output (class logits)"),
    ]
    assert graph.layers["layer1.0.conv1"].in_group is None  # reads the residual stream, left whole


def test_resnet20_shares_one_ratio_per_residual_set() -> None:
    graph = build_layer_graph(zoo("resnet20", 0.25), INPUT, coupled="shared")
    assert len(graph.groups) == 12 and graph.skipped == [("fc", "network output (class logits)")]
    shared = [g for g in graph.groups if g.residual]
    assert [g.index for g in shared] == [0, 5, 9]
    stage2 = shared[1]
    assert stage2.producers == ["layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2", "layer2.2.conv2"]
    assert stage2.consumers == ["layer2.1.conv1", "layer2.2.conv1", "layer3.0.conv1", "layer3.0.shortcut.0"]
    assert stage2.norms == ["layer2.0.bn2", "layer2.0.shortcut.1", "layer2.1.bn2", "layer2.2.bn2"]
    assert shared[2].consumers == ["layer3.1.conv1", "layer3.2.conv1", "fc"]  # the classifier reads them too
    # steps run in the order their first consumer runs
    orders = [graph.layers[g.layer].order for g in graph.groups]
    assert orders == sorted(orders)


def test_mobilenet_groups_carry_the_depthwise_conv() -> None:
    graph = build_layer_graph(zoo("mobilenet", 0.125), INPUT)
    assert len(graph.groups) == 14
    g = graph.groups[1]
    assert (g.producers, g.depthwise, g.consumers) == (["features.2.0"], ["features.3.0"], ["features.4.0"])
    assert g.norms == ["features.2.1", "features.3.1"]
    dw = graph.layers["features.3.0"]
    assert dw.kind == "dwconv" and dw.in_group == dw.out_group == 1
    assert all(len(g.depthwise) == 1 for g in graph.groups[:-1])
    assert graph.groups[-1].consumers == ["classifier"]


def test_mobilenetv2_inner_channels_are_prunable_and_residual_ones_shared_on_request() -> None:
    model = zoo("mobilenetv2", 0.25)
    skip = build_layer_graph(model, INPUT)
    assert skip.groups and all(not g.residual for g in skip.groups)
    assert sum(why == RESIDUAL_SKIP for _, why in skip.skipped) == 6
    shared = build_layer_graph(model, INPUT, coupled="shared")
    assert len(shared.groups) == len(skip.groups) + 6
    assert shared.skipped == [("classifier", "network output (class logits)")]


def test_group_prints_what_is_pruned_together() -> None:
    graph = build_layer_graph(zoo("resnet20", 0.25), INPUT, coupled="shared")
    assert str(graph.groups[9]) == (
        "group 9: 16 channels (residual, shared)\n"
        "  producers: layer3.0.conv2, layer3.0.shortcut.0, layer3.1.conv2, layer3.2.conv2\n"
        "  carried:   layer3.0.bn2, layer3.0.shortcut.1, layer3.1.bn2, layer3.2.bn2\n"
        "  consumers: layer3.1.conv1, layer3.2.conv1, fc")
    assert str(graph.groups[1]) == ("group 1: 4 channels\n  producers: layer1.0.conv1\n  carried:   layer1.0.bn1\n"
                                    "  consumers: layer1.0.conv2")
    report = build_layer_graph(zoo("resnet20", 0.25), INPUT).report().splitlines()
    assert report[0] == "9 prunable groups, 4 channel sets left alone"
    assert report[-1] == "left alone: fc: network output (class logits)"


# --------------------------------------------------------------------------- beyond the zoo

def test_torchvision_resnet18_and_mobilenet_v2_have_groups() -> None:
    resnet = build_layer_graph(build_model(ModelSpec("tv:resnet18", 3, 10)), (3, 32, 32))
    assert [g.producers[0] for g in resnet.groups] == [f"layer{s}.{b}.conv1" for s in (1, 2, 3, 4) for b in (0, 1)]
    assert [g.channels for g in resnet.groups] == [64, 64, 128, 128, 256, 256, 512, 512]
    mbv2 = build_layer_graph(build_model(ModelSpec("tv:mobilenet_v2", 3, 10)), (3, 32, 32))
    assert len(mbv2.groups) == 20 and sum(bool(g.depthwise) for g in mbv2.groups) == 17
    assert mbv2.groups[-1].consumers == ["classifier.1"]  # behind a Dropout


def test_residual_depthwise_user_model() -> None:
    model = build_model(ModelSpec(f"{FIXTURES / 'resdw_net.py'}:factory"))
    skip = build_layer_graph(model, INPUT)
    assert [(g.producers, g.depthwise, g.consumers) for g in skip.groups] == [
        (["block2.expand"], ["block2.dw"], ["block2.project"]),
        (["block3.conv1"], [], ["block3.conv2"]),
        (["head"], [], ["fc"]),
    ]
    shared = build_layer_graph(model, INPUT, coupled="shared")
    g0 = shared.groups[0]
    assert g0.residual and g0.producers == ["stem", "block1.project"] and g0.depthwise == ["block1.dw"]
    assert "block1.project" in g0.consumers  # reads and writes the same channel set
    li = shared.layers["block1.project"]
    assert li.in_group == li.out_group == 0


def test_graph_building_changes_no_weight_or_statistic() -> None:
    model = zoo("resnet20", 0.25).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build_layer_graph(model, INPUT, coupled="shared")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------- what is left alone

class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1)
        self.c, self.fc = nn.Conv2d(8, 6, 1), nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.conv, self.fc = nn.Conv2d(1, 4, 1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.conv(self.stem(x))).mean((2, 3)))


def test_concat_and_unsliceable_layers_are_left_alone_with_a_reason() -> None:
    cat = build_layer_graph(Concat(), (1, 8, 8))
    assert [(g.producers, g.consumers) for g in cat.groups] == [(["c"], ["fc"])]
    assert cat.skipped[:2] == [("a", "passes through a concat"), ("b", "passes through a concat")]

    grouped = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(8, 4, 1),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    graph = build_layer_graph(grouped, (1, 8, 8))  # grouped convs prune in equal blocks (tests/test_grouped.py)
    assert [(g.producers, g.consumers, g.unit) for g in graph.groups] == [(["0"], ["1"], 2), (["1"], ["2"], 2),
                                                                          (["2"], ["5"], 1)]
    assert graph.skipped == [("5", "network output (class logits)")]
    one_per_block = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 4, 3, groups=2), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(4, 10))
    assert build_layer_graph(one_per_block, (1, 8, 8)).skipped[0] == (
        "0", "grouped convs leave no smaller count (blocks of 1)")

    prelu = nn.Sequential(nn.Conv2d(1, 4, 3), nn.PReLU(4), nn.Conv2d(4, 8, 3), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10))
    graph = build_layer_graph(prelu, (1, 8, 8))
    assert graph.skipped[0] == ("0", "carries layer 1 (PReLU) that we cannot slice")
    # its 4 parameters are never pruned, and still counted
    assert graph.other_params == 4 and ResourceModel(graph, "params").full == count_params(prelu)


def test_a_model_without_a_prunable_group_is_refused_clearly() -> None:
    linear = build_model(ModelSpec(f"{FIXTURES / 'resdw_net.py'}:linear_only"))
    assert build_layer_graph(linear, INPUT).groups == []
    with pytest.raises(AmcError, match=exactly("the model has no prunable layer (1: network output (class logits))")):
        ChannelPruner(linear, INPUT)
    flat = build_model(ModelSpec(f"{FIXTURES / 'resdw_net.py'}:flatten_conv"))
    with pytest.raises(AmcError, match=exactly(
            "the model has no prunable layer (0: channel indices are not one-to-one (flatten, concat or split); "
            "3: network output (class logits))")):
        ChannelPruner(flat, INPUT)


@pytest.mark.parametrize("model,kwargs,message", [
    (nn.Sequential(nn.Flatten(), nn.ReLU()), {}, "the model has no Conv2d or Linear layer, so nothing can be pruned"),
    (Twice(), {}, "layer conv is called more than once per forward pass; shared layers cannot be pruned"),
    (nn.Conv2d(1, 2, 3), {"coupled": "merge"}, "coupled must be 'skip' or 'shared', got 'merge'"),
], ids=["no-layers", "shared-layer", "bad-coupled"])
def test_bad_models_and_options_are_refused(model: nn.Module, kwargs: dict, message: str) -> None:
    with pytest.raises(AmcError, match=exactly(message)):
        build_layer_graph(model, (1, 8, 8), **kwargs)

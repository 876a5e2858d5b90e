"""Channel shuffle pruned consistently: ShuffleNet V1's grouped 1x1 -> shuffle -> depthwise -> grouped 1x1.

The set between the two grouped 1x1 convs is pruned in equal cells (a block of the first
conv's groups x a block of the second's, through the shuffle); the slim model's own shuffle,
of fewer channels, then routes every kept channel to the block that read it before. Held
here: the map found by probing, exact slim == masked parity with and without the per-block
refit, exact FLOPs and params, 50% FLOPs reachable, checkpoint rebuilding, and a shuffle
whose cells are unequal left alone with its reason.
"""
from __future__ import annotations

import json
import random

import pytest
import torch

from amc.budget import allowed_counts, round_channels
from amc.flops import count_macs, count_params
from amc.models import ModelSpec, build_model
from amc.models.shufflenet import ShuffleNetV1, channel_shuffle
from amc.pruner import ChannelPruner
from amc.shuffle import cells, shuffle_groups, shuffle_source
from amc.surgery import channel_plan

from test_surgery import INPUT, assert_same_outputs, calibration, randomize_bn


def _v1() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_bn(build_model(ModelSpec("shufflenetv1", 1, 10, width=0.5)), 0)


def test_shuffle_source_is_the_model_s_shuffle() -> None:
    x = torch.arange(12.0).view(1, 12, 1, 1)
    moved = channel_shuffle(x, 3).view(-1).long()
    assert torch.equal(moved, shuffle_source(12, 3))  # channel q after the shuffle came from moved[q]
    assert shuffle_groups(shuffle_source(12, 3)) == 3 and shuffle_groups(torch.arange(12)) == 1
    assert shuffle_groups(torch.tensor([1, 0, 2, 3])) is None
    assert cells(18, [3], [3], 3) == 9  # 3 x 3 cells of 2 channels, contiguous before the shuffle
    assert cells(12, [3], [3], 3) is None  # 4 per group: cells of 4/3 channels


def test_shufflenet_v1_prunes_every_unit_in_cells() -> None:
    pruner = ChannelPruner(_v1(), INPUT)
    groups = pruner.graph.groups
    assert len(groups) == 16  # each unit's bottleneck
    assert (groups[0].shuffle, groups[0].unit) == (1, 3)  # the first unit's 1x1 is not grouped: no shuffle
    assert all(g.shuffle == 3 and g.unit == 9 for g in groups[1:])
    assert set(groups[1].shuffled) == {"units.1.conv2", "units.1.bn2", "units.1.conv3"}  # after the shuffle
    assert "units.1.bn1" not in groups[1].shuffled  # before the shuffle
    counts = pruner.uniform_counts(0.5)
    assert pruner.flops(counts) / pruner.flops.full <= 0.5


@pytest.mark.parametrize("reconstruct", [False, True], ids=["selection", "reconstruct"])
def test_slim_equals_masked_through_the_shuffle(reconstruct: bool) -> None:
    pruner = ChannelPruner(_v1(), INPUT, calibration(1, batches=4) if reconstruct else None)
    x = torch.randn(4, *INPUT, generator=torch.Generator().manual_seed(2))
    for seed in range(3):
        rng = random.Random(seed)
        counts = [rng.choice(allowed_counts(g.channels, g.step(1))) for g in pruner.graph.groups]
        slim = pruner.prune(counts, reconstruct)
        assert_same_outputs(slim, pruner.masked(counts, reconstruct), x)
        assert slim.units[5].conv3.groups == 3 and slim.units[5].conv1.out_channels == counts[5]
        assert pruner.flops(counts) == count_macs(slim, INPUT)
        assert pruner.params(counts) == count_params(slim)


def test_checkpoint_rebuilds_a_slim_shufflenet_v1() -> None:
    from amc.pruned import rebuild_pruned

    pruner = ChannelPruner(_v1(), INPUT)
    counts = pruner.uniform_counts(0.5)
    slim = pruner.prune(counts, reconstruct=False)
    meta = {"model": ModelSpec("shufflenetv1", 1, 10, width=0.5).to_dict(), "input_shape": list(INPUT),
            "coupled": "skip", "channels": channel_plan(pruner.graph, counts)}
    rebuilt = rebuild_pruned(json.loads(json.dumps(meta)))
    rebuilt.load_state_dict(slim.state_dict(), strict=True)
    assert_same_outputs(rebuilt.eval(), slim, torch.randn(2, *INPUT))


def test_a_shuffle_with_unequal_cells_is_left_alone() -> None:
    # bottlenecks of 60 channels: 20 per group, which a 3-group shuffle cannot split into equal cells
    torch.manual_seed(0)
    model = ShuffleNetV1([48, 96, 192], [60, 60, 60], [1, 2, 1], 3, 1, 10).eval()
    pruner = ChannelPruner(model, INPUT)
    reasons = dict(pruner.graph.skipped)
    assert reasons["units.2.conv1"] == ("a channel shuffle of 3 groups whose grouped convs do not split its 60 "
                                        "channels into equal cells")
    assert all(g.shuffle == 1 for g in pruner.graph.groups)


def _unit_forward(shuffle):
    """ShuffleUnit.forward with another channel shuffle in units of more than one group."""
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, 1) if self.groups == 1 else shuffle(self, out)
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        if self.pool is not None:
            return self.relu(torch.cat([self.pool(x), out], 1))
        return self.relu(out + x)
    return forward


def _fixed_group_size(self, out: torch.Tensor) -> torch.Tensor:  # the same map on the full model only
    n, c, h, w = out.shape
    m = self.mid // self.groups
    return out.view(n, c // m, m, h, w).transpose(1, 2).reshape(n, c, h, w)


def test_a_shuffle_the_slim_model_cannot_follow_is_left_alone(monkeypatch) -> None:
    from amc.models.shufflenet import ShuffleUnit

    model = _v1()
    for unit in model.units:
        unit.mid = unit.conv1.out_channels
    monkeypatch.setattr(ShuffleUnit, "forward", _unit_forward(_fixed_group_size))
    pruner = ChannelPruner(model, INPUT)
    assert [g.shuffle for g in pruner.graph.groups] == [1]  # only the first unit's set: it has no shuffle
    prefix = "the slim model's channel shuffle "
    found = {why[len(prefix):] for _, why in pruner.graph.skipped if why.startswith(prefix)}
    # a half-width set of 63 channels cannot take the fixed group of 21; one of 27 (groups of 9) can, wrongly
    assert found == {"fails on fewer channels (RuntimeError)", "routes the kept channels differently"}
    assert sum(why.startswith(prefix) for _, why in pruner.graph.skipped) == 15
    counts = [round_channels(0.5, g.channels, g.step(1)) for g in pruner.graph.groups]
    assert_same_outputs(pruner.prune(counts, False), pruner.masked(counts, False), torch.randn(2, *INPUT))

"""Grouped (non-depthwise) convolutions: ResNeXt's grouped 3x3, ShuffleNet V1's grouped 1x1.

A channel set that a grouped conv reads or writes keeps an equal number of channels in each
of the conv's blocks, so the conv keeps its groups. Held here: the graph's units, exact
slim == masked parity (with and without the per-block least-squares refit), exact FLOPs and
parameter counts, the budget wall, checkpoint rebuilding, and torchvision's ResNeXt and
RegNet reaching 50% FLOPs (they could not before: their grouped convs were left alone).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from amc.budget import allowed_counts
from amc.flops import count_macs, count_params
from amc.models import ModelSpec, build_model
from amc.pruner import ChannelPruner
from amc.selection import top_k
from amc.surgery import channel_plan

from helpers import FIXTURES, in_process
from test_surgery import INPUT, assert_same_outputs, calibration, randomize_bn

GROUPED = f"{FIXTURES / 'grouped_net.py'}:factory"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(build_model(ModelSpec(GROUPED, 1, 10)), 0)


def _random_counts(pruner: ChannelPruner, seed: int, channel_round: int = 1) -> list[int]:
    rng = random.Random(seed)
    return [rng.choice(allowed_counts(g.channels, g.step(channel_round))) for g in pruner.graph.groups]


def test_top_k_keeps_the_best_of_each_block() -> None:
    scores = torch.tensor([5.0, 1, 3, 2, 0, 9, 8, 7])
    assert top_k(scores, 4, unit=2).tolist() == [0, 2, 5, 6]  # 2 of each block of 4
    assert top_k(scores, 4).tolist() == [0, 5, 6, 7]  # without blocks: the best 4 overall
    with pytest.raises(Exception, match="cannot be kept in 2 equal blocks"):
        top_k(scores, 3, unit=2)


def test_graph_prunes_grouped_convs_in_equal_blocks() -> None:
    pruner = ChannelPruner(_model(), INPUT)
    units = [g.unit for g in pruner.graph.groups]
    # reduce -> grouped 3x3 (4); grouped 3x3 -> 1x1; 1x1 -> grouped 1x1 (2); grouped 1x1 (2) -> grouped 3x3 (4)
    assert units == [1, 4, 4, 2, 4, 4, 1]
    assert [g.producers for g in pruner.graph.groups][4] == ["features.12"]
    assert pruner.graph.skipped == [("fc", "network output (class logits)")]
    assert pruner.graph.groups[4].step(8) == 8 and pruner.graph.groups[3].step(3) == 6
    with pytest.raises(Exception, match="must be a multiple of 4"):
        pruner.keep_indices([g.channels for g in pruner.graph.groups[:1]] + [30] + [g.channels for g in
                                                                                  pruner.graph.groups[2:]])


@pytest.mark.parametrize("reconstruct", [False, True], ids=["selection", "reconstruct"])
def test_slim_equals_masked_and_resources_are_exact(reconstruct: bool) -> None:
    model = _model()
    pruner = ChannelPruner(model, INPUT, calibration(1, batches=4) if reconstruct else None)
    x = torch.randn(4, *INPUT, generator=torch.Generator().manual_seed(2))
    for seed in range(3):
        counts = _random_counts(pruner, seed)
        slim = pruner.prune(counts, reconstruct)
        assert_same_outputs(slim, pruner.masked(counts, reconstruct), x)
        convs = {n: m for n, m in slim.named_modules() if isinstance(m, nn.Conv2d)}
        assert [convs[n].groups for n in ("features.6", "features.12", "features.15")] == [4, 2, 4]
        assert pruner.flops(counts) == count_macs(slim, INPUT)
        assert pruner.params(counts) == count_params(slim)


def test_reconstruction_refits_each_block_of_a_grouped_consumer() -> None:
    model = _model()
    pruner = ChannelPruner(model, INPUT, calibration(3, batches=8))
    counts = [g.channels for g in pruner.graph.groups]
    counts[1] = 16  # features.6 (4 groups) reads half of each block of 8
    keep = pruner.keep_indices(counts)
    refit = pruner.reconstructed_weights(keep)["features.6"]
    w = model.get_submodule("features.6").weight.data
    dropped = torch.ones(32, dtype=torch.bool)
    dropped[keep[1]] = False
    plain = w.clone().view(4, 8, 8, 3, 3)
    plain[dropped.view(4, 1, 8, 1, 1).expand(-1, 8, -1, 3, 3)] = 0
    plain = plain.view_as(w)
    in_dropped = dropped.view(4, 1, 8, 1).expand(-1, 8, -1, 9)  # block g of outputs, its block of inputs
    assert (refit.view(4, 8, 8, 9)[in_dropped] == 0).all() and (refit.view(4, 8, 8, 9)[~in_dropped] != 0).any()
    cache = pruner.cache
    assert cache.residual("features.6", keep[1], refit) < cache.residual("features.6", keep[1], plain)


def test_budget_wall_holds_with_grouped_convs() -> None:
    pruner = ChannelPruner(_model(), INPUT)
    rng = random.Random(0)
    for channel_round in (1, 8):
        for fill in (False, True):
            for _ in range(30):
                state = pruner.state(0.4, 0.2, channel_round, "flops", fill=fill)
                while not state.done:
                    state.step(rng.random())
                assert state.ratio() <= 0.4 + 1e-12
                assert all(k % g.step(channel_round) == 0 or k == g.channels
                           for k, g in zip(state.counts, pruner.graph.groups))
                pruner.keep_indices(state.counts)  # every count is one the surgery accepts


def test_checkpoint_rebuilds_a_grouped_slim_model(tmp_path: Path) -> None:
    from amc.pruned import rebuild_pruned

    model = _model()
    pruner = ChannelPruner(model, INPUT)
    counts = _random_counts(pruner, 5, channel_round=4)
    slim = pruner.prune(counts, reconstruct=False)
    meta = {"model": ModelSpec(GROUPED, 1, 10).to_dict(), "input_shape": list(INPUT), "coupled": "skip",
            "channels": channel_plan(pruner.graph, counts)}
    rebuilt = rebuild_pruned(json.loads(json.dumps(meta)))
    rebuilt.load_state_dict(slim.state_dict(), strict=True)  # same shapes, tensor for tensor
    x = torch.randn(2, *INPUT)
    assert_same_outputs(rebuilt.eval(), slim, x)


@pytest.mark.parametrize("name", ["tv:resnext50_32x4d", "tv:regnet_y_400mf"])
def test_torchvision_grouped_models_reach_half_the_flops(name: str) -> None:
    model = build_model(ModelSpec(name, 1, 10)).eval()
    pruner = ChannelPruner(model, (1, 32, 32))
    assert max(g.unit for g in pruner.graph.groups) > 1
    counts = pruner.uniform_counts(0.5)  # refused before: "FLOPs target 0.5 is unreachable"
    assert 0.4 < pruner.flops(counts) / pruner.flops.full <= 0.5
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert_same_outputs(pruner.prune(counts, False), pruner.masked(counts, False), x)


def test_search_runs_on_a_grouped_model(capsys, tmp_path: Path, tiny_data_dir: Path) -> None:
    torch.save(_model().state_dict(), tmp_path / "g.pt")
    proc = in_process(capsys, "search", "--model", GROUPED, "--weights", tmp_path / "g.pt", "--data-dir",
                      tiny_data_dir, "--reward-set-size", "300", "--calib-batches", "2", "--calib-batch-size", "20",
                      "--episodes", "3", "--warmup", "1", "--fill-budget", "--channel-round", "4", "--threads", "1",
                      "--run", tmp_path / "r", "--json")
    assert proc.returncode == 0, proc.stderr
    best = json.loads((tmp_path / "r" / "best_policy.json").read_text())
    assert best["flops_ratio"] <= 0.5
    layers = best["layers"] if "layers" in best else best["policy"]
    assert len(layers) == 7


def test_shufflenet_v2_prunes_inside_its_branches() -> None:
    """The channel shuffle no longer stops the tracer; the split-, concat- and shuffle-tied
    channels stay whole, and each branch's inner width (1x1 -> depthwise 3x3 -> 1x1) is pruned."""
    torch.manual_seed(0)
    model = randomize_bn(build_model(ModelSpec("tv:shufflenet_v2_x0_5", 1, 10)), 0)
    pruner = ChannelPruner(model, (1, 32, 32))
    inner = [g for g in pruner.graph.groups if g.producers[0].endswith("branch2.0")]
    assert len(inner) == 16 and all(g.depthwise for g in inner)  # one per block
    reasons = {why for _, why in pruner.graph.skipped}
    assert any("channel shuffle" in r or "cannot follow" in r or "concat" in r for r in reasons)
    counts = pruner.uniform_counts(0.5)
    assert pruner.flops(counts) / pruner.flops.full <= 0.5
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    slim, masked = pruner.prune(counts, False), pruner.masked(counts, False)
    assert_same_outputs(slim, masked, x)
    with torch.no_grad():
        assert not torch.allclose(masked(x), model(x))  # it did prune
    assert pruner.flops(counts) == count_macs(slim, (1, 32, 32))


def test_zoo_shufflenetv2_keeps_its_resolution_and_prunes_to_half() -> None:
    """The CIFAR-style zoo model: stride-1 stem, no max-pool; its branches prune to 50% FLOPs."""
    torch.manual_seed(0)
    model = randomize_bn(build_model(ModelSpec("shufflenetv2", 1, 10, width=0.5)), 0)
    pruner = ChannelPruner(model, INPUT)
    assert pruner.graph.layers["stage2.0.branch2.0"].in_hw == (28, 28)
    counts = pruner.uniform_counts(0.5)
    x = torch.randn(2, *INPUT, generator=torch.Generator().manual_seed(1))
    assert_same_outputs(pruner.prune(counts, False), pruner.masked(counts, False), x)

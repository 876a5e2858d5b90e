"""Slim surgery: the physically smaller model computes exactly what the masked model computes.

The masked model keeps every tensor at full size and zeroes the consumers' input columns
of the pruned channels; the slim model drops those channels from producers, BNs, depthwise
convs and consumers. With the same kept channels (and the same reconstructed weights) their
outputs must agree to float rounding, for every zoo model, the torchvision models and a user
model with residual adds and depthwise convs
(docs/method.md#channel-selection-and-reconstruction, "Slim model").
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from amc.models import ModelSpec, build_model
from amc.pruner import ChannelPruner
from amc.surgery import channel_plan, masked_model, slim_model

from helpers import FIXTURES

RESDW = f"{FIXTURES / 'resdw_net.py'}:factory"
# small widths keep every model a few milliseconds per forward pass on one thread
SMALL_ZOO = {"plain20": 0.25, "resnet20": 0.25, "resnet56": 0.25, "vgg16": 0.125, "mobilenet": 0.125,
             "mobilenetv2": 0.25}
INPUT = (1, 28, 28)


def randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Random affine parameters and running statistics, so no BN is the identity and a wrongly
    sliced BN shows in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def build(name: str, width: float = 1.0, in_channels: int = 1, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(build_model(ModelSpec(name, in_channels, 10, width)), seed)


def random_counts(pruner: ChannelPruner, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [int(torch.randint(1, grp.channels + 1, (1,), generator=g)) for grp in pruner.graph.groups]


def calibration(seed: int, shape: tuple[int, int, int] = INPUT, batches: int = 2, size: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, *shape, generator=g) for _ in range(batches)]


def assert_same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    scale = float(yb.abs().max())
    assert scale > 0 and torch.isfinite(ya).all()
    assert torch.allclose(ya, yb, rtol=1e-4, atol=1e-5 * scale), float((ya - yb).abs().max()) / scale


def weight_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


# --------------------------------------------------------------------------- zoo: slim == masked

@pytest.mark.parametrize("reconstruct", [False, True], ids=["selection", "reconstruct"])
@pytest.mark.parametrize("name", list(SMALL_ZOO))
def test_slim_equals_masked_for_zoo_models(name: str, reconstruct: bool) -> None:
    model = build(name, SMALL_ZOO[name])
    pruner = ChannelPruner(model, INPUT, calibration(1) if reconstruct else None)
    x = torch.randn(4, *INPUT, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(x)
    for seed in (0, 1):
        counts = random_counts(pruner, seed)
        slim, masked = pruner.prune(counts, reconstruct), pruner.masked(counts, reconstruct)
        assert_same_outputs(slim, masked, x)
        if reconstruct:  # the refit weights were used, not the selected originals
            plain = pruner.masked(counts, reconstruct=False)
            with torch.no_grad():
                assert not torch.allclose(plain(x), masked(x))
    with torch.no_grad():  # pruning copies; the original model is untouched
        assert torch.equal(model(x), before)


def test_slim_equals_masked_for_resnet20_with_shared_residual_groups() -> None:
    model = build("resnet20", 0.25)
    for reconstruct in (False, True):
        pruner = ChannelPruner(model, INPUT, calibration(3) if reconstruct else None, coupled="shared")
        assert any(g.residual for g in pruner.graph.groups)
        x = torch.randn(4, *INPUT, generator=torch.Generator().manual_seed(4))
        for seed in (0, 1):
            counts = random_counts(pruner, seed)
            assert_same_outputs(pruner.prune(counts, reconstruct), pruner.masked(counts, reconstruct), x)


def test_slim_equals_masked_for_mobilenetv2_with_shared_residual_groups() -> None:
    # at width 0.25 the first block is residual and its 1x1 conv reads and writes one group
    model = build("mobilenetv2", 0.25)
    pruner = ChannelPruner(model, INPUT, calibration(5), coupled="shared")
    assert any(g.layer in g.producers for g in pruner.graph.groups)
    x = torch.randn(4, *INPUT, generator=torch.Generator().manual_seed(6))
    counts = random_counts(pruner, 7)
    assert_same_outputs(pruner.prune(counts), pruner.masked(counts), x)


def test_full_counts_give_the_original_model() -> None:
    model = build("mobilenet", 0.125)
    pruner = ChannelPruner(model, INPUT, calibration(0))
    full = [g.channels for g in pruner.graph.groups]
    slim = pruner.prune(full)
    assert weight_shapes(slim) == weight_shapes(model)
    x = torch.randn(3, *INPUT)
    with torch.no_grad():
        assert torch.equal(slim(x), model(x))


# --------------------------------------------------------------------------- models that must prune

def check_physically_slim(model: nn.Module, pruner: ChannelPruner, counts: list[int]) -> nn.Module:
    """Prune, then check every tensor the groups touch shrank to exactly the kept channels."""
    keep = pruner.keep_indices(counts)
    slim = pruner.prune(counts, reconstruct=pruner.cache is not None)
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
    dw_seen = 0
    for g, idx, k in zip(pruner.graph.groups, keep, counts):
        assert len(idx) == k and k < g.channels
        for name in g.producers:
            m, orig = slim.get_submodule(name), model.get_submodule(name)
            assert m.weight.shape[0] == k < orig.weight.shape[0]
            if m.bias is not None:
                assert torch.equal(m.bias, orig.bias[idx])
        for name in g.consumers:
            m = slim.get_submodule(name)
            assert m.weight.shape[1] == k
            assert (m.in_features if isinstance(m, nn.Linear) else m.in_channels) == k
        for name in g.depthwise:
            m, orig = slim.get_submodule(name), model.get_submodule(name)
            assert m.groups == m.in_channels == m.out_channels == k
            assert m.weight.shape == (k, 1, *orig.kernel_size)
            assert torch.equal(m.weight, orig.weight[idx])
            if m.bias is not None:
                assert torch.equal(m.bias, orig.bias[idx])
            dw_seen += 1
        for name in g.norms:
            bn, orig = slim.get_submodule(name), model.get_submodule(name)
            assert bn.num_features == k
            for attr in ("weight", "bias", "running_mean", "running_var"):
                assert torch.equal(getattr(bn, attr), getattr(orig, attr)[idx]), (name, attr)
    # every conv's weight agrees with its declared channels, or the forward pass would fail
    for m in slim.modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[:2] == (m.out_channels, m.in_channels // m.groups)
    slim.dw_seen = dw_seen  # type: ignore[attr-defined]
    return slim


@pytest.mark.parametrize("name,shape", [("tv:resnet18", (1, 32, 32)), ("tv:mobilenet_v2", (1, 32, 32))])
def test_torchvision_models_prune_to_a_physically_smaller_model(name: str, shape: tuple[int, int, int]) -> None:
    model = build(name, in_channels=1)
    # reconstruction of resnet18's 3x3 convs caches 478 MiB of normal equations: slicing only there
    pruner = ChannelPruner(model, shape, calibration(10, shape) if name == "tv:mobilenet_v2" else None)
    assert len(pruner.graph.groups) >= 8
    counts = [max(1, g.channels // 2) for g in pruner.graph.groups]
    slim = check_physically_slim(model, pruner, counts)
    if name == "tv:mobilenet_v2":
        assert slim.dw_seen > 0
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    # 16 calibration rows for the 960 inputs of the last 1x1 convs: the refit is underdetermined
    # and its large weights amplify float32 rounding to ~1e-4, so compare in float64
    assert_same_outputs(slim.double(), pruner.masked(counts).double(), x.double())


@pytest.mark.parametrize("coupled", ["skip", "shared"])
def test_residual_depthwise_user_model_prunes(coupled: str) -> None:
    model = build(RESDW)
    pruner = ChannelPruner(model, INPUT, calibration(8), coupled=coupled)
    groups = pruner.graph.groups
    assert len(groups) == (3 if coupled == "skip" else 5)
    assert any(g.depthwise for g in groups)
    if coupled == "shared":  # the stem's channels run through block1.dw into block1.project and back
        g0 = groups[0]
        assert g0.residual and g0.producers == ["stem", "block1.project"]
        assert g0.depthwise == ["block1.dw"] and g0.consumers == ["block1.project", "block2.expand"]
    else:  # residual-tied channels are left alone, and say why
        assert [names for names, _ in pruner.graph.skipped][:2] == ["stem, block1.project",
                                                                    "block2.project, block3.conv2"]
    counts = [max(1, g.channels // 3) for g in groups]
    slim = check_physically_slim(model, pruner, counts)
    assert slim.dw_seen == (1 if coupled == "skip" else 2)
    x = torch.randn(4, *INPUT, generator=torch.Generator().manual_seed(9))
    assert_same_outputs(slim, pruner.masked(counts), x)
    assert_same_outputs(pruner.prune(counts, False), pruner.masked(counts, False), x)


# --------------------------------------------------------------------------- surgery functions

def test_slim_model_uses_given_weights_and_leaves_the_original_alone() -> None:
    model = build(RESDW)
    pruner = ChannelPruner(model, INPUT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    keep = pruner.keep_indices([3, 5, 7])
    new = {"block2.project": torch.randn_like(model.block2.project.weight)}
    slim = slim_model(model, pruner.graph, keep, new)
    assert torch.equal(slim.block2.project.weight, new["block2.project"][:, keep[0]])
    masked = masked_model(model, pruner.graph, keep, new)
    dropped = torch.ones(24, dtype=torch.bool)
    dropped[keep[0]] = False
    assert (masked.block2.project.weight[:, dropped] == 0).all()
    assert torch.equal(masked.block2.project.weight[:, keep[0]], new["block2.project"][:, keep[0]])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_channel_plan_records_each_group() -> None:
    pruner = ChannelPruner(build(RESDW), INPUT)
    plan = channel_plan(pruner.graph, [3, 5, 7])
    assert plan == [
        {"group": 0, "layer": "block2.project", "producers": ["block2.expand"], "channels": 24, "kept": 3},
        {"group": 1, "layer": "block3.conv2", "producers": ["block3.conv1"], "channels": 12, "kept": 5},
        {"group": 2, "layer": "fc", "producers": ["head"], "channels": 32, "kept": 7},
    ]

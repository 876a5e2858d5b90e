"""Adaptive BN (amc.bn_recal): only BN buffers change, only calibration images are drawn."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from amc.bn_recal import bn_layers, recalibrate_bn
from amc.data import DEBIAN_FASHION_MNIST, load_splits

from helpers import SUBPROCESS_ENV, TINY_TRAIN, stamped_index

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class WithBuffer(nn.Module):
    """A layer with a buffer of its own that forward passes in train mode would change."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
        return x


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(),
        WithBuffer(), nn.Dropout(0.5),
        nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


def is_bn_buffer(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in BN_BUFFERS


def test_only_bn_buffers_change(tiny_data_dir: Path) -> None:
    splits = load_splits(data_dir=str(tiny_data_dir), reward_set_size=500)
    model = bn_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = recalibrate_bn(model, splits.bn_batches(3, 32, seed=0))
    assert out is model and not model.training and not any(m.training for m in model.modules())
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        if is_bn_buffer(k):
            continue
        assert torch.equal(after[k], before[k]), f"{k} changed"
    for bn in bn_layers(model):  # re-estimated: 3 batches, a cumulative average
        assert int(bn.num_batches_tracked) == 3
    assert not torch.equal(after["1.running_mean"], before["1.running_mean"])
    assert not torch.equal(after["6.running_var"], before["6.running_var"])
    assert [bn.momentum for bn in bn_layers(model)] == [0.3, 0.1]  # restored
    assert all(p.grad is None for p in model.parameters())


def test_statistics_are_the_average_over_the_batches() -> None:
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten()).eval()
    torch.manual_seed(1)
    batches = [torch.randn(16, 1, 4, 4) * s + m for m, s in ((0.0, 1.0), (2.0, 3.0), (-1.0, 0.5))]
    recalibrate_bn(model, [(x, torch.zeros(16)) for x in batches])  # (images, labels) pairs work too
    bn = model[0]
    assert bn.running_mean.item() == pytest.approx(torch.stack([x.mean() for x in batches]).mean().item(), rel=1e-5)
    assert bn.running_var.item() == pytest.approx(torch.stack([x.var() for x in batches]).mean().item(), rel=1e-5)


def test_draws_calibration_images_only(tiny_data_dir: Path) -> None:
    splits = load_splits(data_dir=str(tiny_data_dir), seed=0, reward_set_size=1000)
    reward = set(stamped_index(splits.reward.images).tolist())
    train = set(stamped_index(splits.train.images).tolist())
    assert len(reward) == 1000 and len(train) == TINY_TRAIN - 1000
    batches = splits.bn_batches(8, 64, seed=5)
    assert [tuple(b.shape) for b in batches] == [(64, 1, 28, 28)] * 8
    # undo the normalisation to read the index stamped in the first two pixels
    x = torch.cat(batches)
    raw = torch.round((x * splits.train.std + splits.train.mean) * 255).to(torch.long)
    drawn = (raw[:, 0, 0, 0] + 256 * raw[:, 0, 0, 1]).tolist()
    assert len(set(drawn)) == 8 * 64  # without replacement
    assert not set(drawn) & reward
    assert set(drawn) <= train
    # the indices the method reports are the images it drew
    assert drawn == stamped_index(splits.train.images[splits.bn_indices(8, 64, seed=5)]).tolist()
    # seeded, and a draw apart from the reconstruction's calibration batches
    assert torch.equal(torch.cat(splits.bn_batches(8, 64, seed=5)), x)
    assert not torch.equal(torch.cat(splits.bn_batches(8, 64, seed=6)), x)
    assert not torch.equal(torch.cat(splits.calibration_batches(8, 64, seed=5)), x)
    # more than the calibration part holds: all of it, once
    assert sum(len(b) for b in splits.bn_batches(10_000, 64, seed=0)) == len(splits.train)


def test_a_model_without_bn_is_left_unchanged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), WithBuffer(), nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(1, 1, 6, 6))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    assert recalibrate_bn(model, [torch.randn(4, 1, 6, 6)]) is model
    assert not calls  # no forward pass: nothing to estimate
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training


def test_no_batch_or_a_failing_pass_changes_nothing() -> None:
    model = bn_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="no batch"):
        recalibrate_bn(model, [])
    with pytest.raises(RuntimeError):  # wrong channel count, after a good batch
        recalibrate_bn(model, [torch.randn(4, 1, 8, 8), torch.randn(4, 3, 8, 8)])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [bn.momentum for bn in bn_layers(model)] == [0.3, 0.1] and not model.training


@pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
                    reason="needs Debian's dataset-fashion-mnist")
def test_unpruned_model_on_its_own_distribution_keeps_its_accuracy() -> None:
    """Re-estimating the BN statistics of the trained, unpruned plain20 on 1,000 calibration
    images gives statistics close to those it learned, and so about the same accuracy."""
    from amc.loading import resolve_model

    splits = load_splits(data_dir=str(DEBIAN_FASHION_MNIST), seed=0, reward_set_size=5000)
    model, _, _ = resolve_model("plain20", None, splits.info)
    model.eval()
    x, y = splits.reward.tensors()
    x, y = x[:1000], y[:1000]

    def top1() -> float:
        with torch.no_grad():
            return 100.0 * (model(x).argmax(1) == y).float().mean().item()

    before = top1()
    recalibrate_bn(model, splits.bn_batches(20, 50, seed=0))
    after = top1()
    assert before > 85.0
    assert abs(after - before) <= 1.5, (before, after)


def test_the_engine_does_not_import_the_agents() -> None:
    code = ("import sys, amc.bn_recal, amc.data; "
            "bad = [m for m in ('gymnasium', 'stable_baselines3', 'envs', 'agents') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], env=SUBPROCESS_ENV, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 0, proc.stderr

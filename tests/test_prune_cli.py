"""``amc prune`` end to end, policy files, and every bad input as one ``error:`` line.

The end-to-end runs are real subprocesses on a tiny user model (residual adds and depthwise
convs) with ``.pt`` weights and the fake dataset. What they write is checked against the
same pruning done in this process: same counts, same outputs, exact FLOPs and params.
Most error cases run ``amc.cli.main`` in this process (a subprocess costs seconds of torch
import each); the unprunable model runs the real command as well.
"""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

import amc
from amc.cli import main
from amc.data import load_splits
from amc.errors import AmcError
from amc.flops import count_macs, count_params
from amc.models import ModelSpec, build_model
from amc.policy import load_policy, parse_policy, write_policy
from amc.pruner import ChannelPruner

from helpers import FIXTURES, exactly

RESDW = f"{FIXTURES / 'resdw_net.py'}:factory"
INPUT = (1, 28, 28)
REWARD = 300  # images in the reward set: enough to evaluate, cheap to evaluate
CALIB = ("--calib-batches", "2", "--calib-batch-size", "8")


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def in_process(*args: str, capsys) -> subprocess.CompletedProcess:
    """``amc ARGS`` run by ``amc.cli.main`` here, as a CompletedProcess for ``cli_error``."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse errors exit
        rc = int(e.code)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


@pytest.fixture
def weights(tmp_path: Path) -> tuple[nn.Module, Path]:
    """The user model with random weights and BN statistics, saved as a plain ``.pt`` state_dict."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(RESDW))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path / "resdw.pt"
    torch.save(model.state_dict(), path)
    return model.eval(), path


def same_pruner(model: nn.Module, data_dir: Path, reconstruct: bool) -> ChannelPruner:
    """The pruner ``amc prune`` builds, with the same calibration batches (seed 0)."""
    splits = load_splits("fashion-mnist", str(data_dir), 0, REWARD)
    calib = splits.calibration_batches(2, 8, 0) if reconstruct else None
    return ChannelPruner(model, INPUT, calib)


def assert_close_outputs(a: nn.Module, b: nn.Module) -> None:
    x = torch.randn(8, *INPUT, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    scale = float(yb.abs().max())
    assert torch.allclose(ya, yb, rtol=1e-4, atol=1e-5 * scale)


# --------------------------------------------------------------------------- end to end

def test_uniform_policy_writes_a_slim_checkpoint(run_amc, tmp_path: Path, tiny_data_dir: Path, weights) -> None:
    model, pt = weights
    out = tmp_path / "pruned"
    proc = run_amc("prune", "--model", RESDW, "--weights", pt, "--data-dir", tiny_data_dir,
                   "--reward-set-size", REWARD, *CALIB, "--policy", "uniform:0.5", "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    res = last_json(proc.stdout)
    assert {"flops_ratio", "params_ratio", "reward_top1", "test_top1"} <= set(res)
    assert 0.0 < res["flops_ratio"] <= 0.5 and 0.0 < res["params_ratio"] < 1.0
    assert 0.0 <= res["reward_top1"] <= 100.0 and 0.0 <= res["test_top1"] <= 100.0
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]

    meta = json.loads((out / "model.json").read_text())
    pruner = same_pruner(model, tiny_data_dir, reconstruct=True)
    counts = pruner.uniform_counts(0.5)
    assert [c["kept"] for c in meta["channels"]] == counts
    assert [c["layer"] for c in meta["channels"]] == ["block2.project", "block3.conv2", "fc"]
    assert meta["reconstruct"] is True and meta["flops_ratio"] == res["flops_ratio"]

    loaded = amc.load_pruned(out)
    slim = pruner.prune(counts)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in slim.state_dict().items()}
    assert_close_outputs(loaded, slim)
    assert meta["flops"] == res["flops"] == count_macs(loaded, INPUT)
    assert meta["params"] == res["params"] == count_params(loaded) < count_params(model)
    assert res["flops_ratio"] == pytest.approx(count_macs(loaded, INPUT) / count_macs(model, INPUT))
    assert loaded.block2.dw.groups == counts[0]


def test_policy_file_round_trip_without_reconstruction(run_amc, tmp_path: Path, tiny_data_dir: Path,
                                                       weights) -> None:
    model, pt = weights
    pruner = same_pruner(model, tiny_data_dir, reconstruct=False)
    counts = [7, 5, 13]
    policy = tmp_path / "policy.json"
    written = write_policy(policy, pruner, counts)
    assert load_policy(policy, pruner) == counts
    out = tmp_path / "pruned"
    proc = run_amc("prune", "--model", RESDW, "--weights", pt, "--data-dir", tiny_data_dir,
                   "--reward-set-size", REWARD, "--no-reconstruct", "--policy", policy, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "model.json").read_text())
    assert [c["kept"] for c in meta["channels"]] == counts
    assert meta["reconstruct"] is False
    assert last_json(proc.stdout)["flops_ratio"] == pytest.approx(written["flops_ratio"])

    loaded = amc.load_pruned(out)
    assert_close_outputs(loaded, pruner.prune(counts, reconstruct=False))
    # no refit: the consumers hold the original weights' kept columns
    keep = pruner.keep_indices(counts)
    assert torch.equal(loaded.block2.project.weight, model.block2.project.weight[:, keep[0]])
    assert torch.equal(loaded.fc.weight, model.fc.weight[:, keep[2]])


# --------------------------------------------------------------------------- bad ratios

@pytest.mark.parametrize("policy,message", [
    ("uniform:1.5", "uniform FLOPs ratio must be in (0, 1], got 1.5"),
    ("uniform:nan", "uniform FLOPs ratio must be in (0, 1], got nan"),
    ("uniform:0", "uniform FLOPs ratio must be in (0, 1], got 0"),
    ("uniform:-0.1", "uniform FLOPs ratio must be in (0, 1], got -0.1"),
    ("uniform:inf", "uniform FLOPs ratio must be in (0, 1], got inf"),
    ("uniform:half", "--policy uniform:R needs a number, got 'uniform:half'"),
])
def test_bad_uniform_ratio(policy: str, message: str, tmp_path: Path, capsys, cli_error) -> None:
    cli_error(in_process("prune", "--model", RESDW, "--policy", policy, "--out", tmp_path / "o", capsys=capsys),
              message)
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def small_pruner() -> ChannelPruner:
    return ChannelPruner(build_model(ModelSpec(RESDW)), INPUT)


@pytest.mark.parametrize("ratio,shown", [(1.5, "1.5"), (math.nan, "nan"), (-0.1, "-0.1"), (0, "0"), (True, "True"),
                                         ("0.5", "'0.5'"), (None, "None")])
def test_policy_file_with_a_bad_ratio(ratio, shown: str, small_pruner, tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"layers": [{"layer": "block2.project", "ratio": 0.5},
                                           {"layer": "block3.conv2", "ratio": ratio},
                                           {"layer": "fc", "ratio": 0.5}]}))
    with pytest.raises(AmcError, match=exactly(f"{path}: layer block3.conv2: preserve ratio must be in (0, 1], "
                                               f"got {shown}")):
        load_policy(path, small_pruner)


def test_policy_file_with_nan_through_the_cli(small_pruner, tmp_path: Path, tiny_data_dir: Path, capsys,
                                              cli_error) -> None:
    path = tmp_path / "policy.json"
    path.write_text('[0.5, NaN, 0.5]')  # json.dumps writes NaN; json.loads reads it back
    cli_error(in_process("prune", "--model", RESDW, "--data-dir", tiny_data_dir, "--reward-set-size", REWARD,
                         "--no-reconstruct", "--policy", path, "--out", tmp_path / "o", capsys=capsys),
              f"{path}: layer block3.conv2: preserve ratio must be in (0, 1], got nan")


def test_policy_forms_and_their_errors(small_pruner) -> None:
    p = small_pruner
    assert parse_policy([0.5, 0.5, 0.5], p) == [12, 6, 16]
    assert parse_policy({"ratios": [1.0, 0.25, 0.01]}, p) == [24, 3, 1]
    assert parse_policy([0.5, 0.5, 0.5], p, channel_round=8) == [16, 8, 16]  # 12 ties between 8 and 16: up
    # kept wins over ratio
    assert parse_policy({"layers": [{"kept": 3, "ratio": 0.9}, {"kept": 12}, {"ratio": 1.0}]}, p) == [3, 12, 32]
    errors = [
        ([0.5, 0.5], "policy has 2 layers but the model has 3 prunable layers"),
        ("0.5", "policy: expected a list of layers or ratios"),
        ({"layers": [{"layer": "head", "ratio": 0.5}, 0.5, 0.5]},
         "policy: layer 'head' does not match the model's layer 'block2.project'"),
        ({"layers": [{"kept": 25}, 0.5, 0.5]},
         "policy: layer block2.project: kept must be an integer in [1, 24], got 25"),
        ({"layers": [{"kept": 0}, 0.5, 0.5]},
         "policy: layer block2.project: kept must be an integer in [1, 24], got 0"),
        ({"layers": [{"kept": 2.5}, 0.5, 0.5]},
         "policy: layer block2.project: kept must be an integer in [1, 24], got 2.5"),
    ]
    for obj, message in errors:
        with pytest.raises(AmcError, match=exactly(message)):
            parse_policy(obj, p)
    with pytest.raises(AmcError, match=exactly("preserve ratios must be in (0, 1], got 1.5")):
        p.counts_from_ratios([0.5, 1.5, 0.5])
    with pytest.raises(AmcError, match=exactly("layer fc: kept channels must be in [1, 32], got 33")):
        p.prune([1, 1, 33])


# --------------------------------------------------------------------------- models that cannot be pruned

def test_model_without_a_prunable_layer_in_the_real_command(run_amc, tmp_path: Path, tiny_data_dir: Path,
                                                            cli_error) -> None:
    cli_error(run_amc("prune", "--model", f"{FIXTURES / 'resdw_net.py'}:linear_only", "--data-dir", tiny_data_dir,
                      "--reward-set-size", REWARD, "--no-reconstruct", "--policy", "uniform:0.5",
                      "--out", tmp_path / "o"),
              "the model has no prunable layer (1: network output (class logits))")


def test_model_whose_conv_is_flattened_into_the_classifier(tmp_path: Path, tiny_data_dir: Path, capsys,
                                                           cli_error) -> None:
    cli_error(in_process("prune", "--model", f"{FIXTURES / 'resdw_net.py'}:flatten_conv", "--data-dir",
                         tiny_data_dir, "--reward-set-size", REWARD, "--policy", "uniform:0.5", *CALIB,
                         "--out", tmp_path / "o", capsys=capsys),
              "the model has no prunable layer (0: channel indices are not one-to-one (flatten, concat or split); "
              "3: network output (class logits))")

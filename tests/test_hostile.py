"""Hostile input and a hostile machine: each is one ``error:`` line and exit code 2, never a traceback.

Other suites test the bad input of their own command; this one adds what they leave out:
paths that cannot be read or written, weights and images that do not fit, every number of
``amc search`` out of range or NaN, seeds, a full disk in the middle of a write, a reward
that is NaN, and the memory bound of the least-squares cache.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from amc.cli import main
from amc.models import ModelSpec, build_model
from helpers import assert_one_error_line
from test_search_cli import TINY_FACTORY, read_episodes, search_args, setup  # noqa: F401  (setup is a fixture)

SEED_RANGE = "must be an integer in [0, 4294967295]"


def amc(*args, capsys) -> subprocess.CompletedProcess:
    """``amc ARGS`` run here (a subprocess costs seconds of imports), as a CompletedProcess."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse errors exit from inside the parser
        rc = int(e.code)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


def error(*args, capsys) -> str:
    return assert_one_error_line(amc(*args, capsys=capsys))


def tmp_files(folder: Path) -> list[str]:
    """Temporary files (or folders) an interrupted atomic write would leave."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


# --------------------------------------------------------------------------- numbers out of range

@pytest.mark.parametrize("extra,message", [
    (["--episodes", "0"], "--episodes must be >= 1, got 0"),
    (["--episodes", "-3"], "--episodes must be >= 1, got -3"),
    (["--episodes", "1.5"], "argument --episodes: invalid int value: '1.5' (see: amc search --help)"),
    (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["--target-flops", "inf"], "--target-flops must be in (0, 1], got inf"),
    (["--target-flops", "-0.5"], "--target-flops must be in (0, 1], got -0.5"),
    (["--lbound", "nan"], "--lbound must be in (0, 1], got nan"),
    (["--lbound", "1.5"], "--lbound must be in (0, 1], got 1.5"),
    (["--seed", "-1"], f"argument --seed: {SEED_RANGE}, got -1 (see: amc search --help)"),
    (["--seed", "4294967296"], f"argument --seed: {SEED_RANGE}, got 4294967296 (see: amc search --help)"),
    (["--seed", "nan"], f"argument --seed: {SEED_RANGE}, got 'nan' (see: amc search --help)"),
    (["--split-seed", "-1"], f"argument --split-seed: {SEED_RANGE}, got -1 (see: amc search --help)"),
    (["--save-every", "0"], "--save-every must be >= 1, got 0"),
    (["--image-size", "0"], "--image-size must be >= 1, got 0"),
    (["--max-cache-mb", "0"], "--max-cache-mb must be a positive number, got 0.0"),
    (["--max-cache-mb", "nan"], "--max-cache-mb must be a positive number, got nan"),
    (["--sigma", "nan"], "--sigma must be a finite number >= 0, got nan"),
    (["--sigma-decay", "0"], "--sigma-decay must be in (0, 1] or auto, got 0.0"),
    (["--actor-lr", "-1"], "--actor-lr must be a finite number >= 0, got -1.0"),
    (["--tau", "nan"], "--tau must be a finite number >= 0, got nan"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--buffer-episodes", "0"], "--buffer-episodes must be >= 1, got 0"),
    (["--hidden", "0"], "--hidden needs positive layer sizes, got [0]"),
    (["--eval-batch-size", "0"], "--eval-batch-size must be >= 1, got 0"),
    (["--channel-round", "0"], "--channel-round must be >= 1, got 0"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--points-per-image", "0"], "--points-per-image must be >= 1, got 0"),
    (["--calib-batches", "0"], "--calib-batches must be >= 1, got 0"),
    (["--reward-set-size", "0"], "--reward-set-size must be >= 1, got 0"),  # at parse time: the data is not read yet
    (["--reward-set-size", "1000"], "--reward-set-size must be in [1, 999], got 1000"),
    (["--mean", "nan"], "--mean must be a finite number, got nan"),
    (["--std", "0"], "--std must be a positive finite number, got 0.0"),
    (["--std", "1", "inf"], "--std must be a positive finite number, got inf"),
    (["--width", "0"], "--width must be in (0, 4], got 0.0"),
])
def test_search_numbers_out_of_range(setup, tmp_path, capsys, extra, message):
    run = tmp_path / "run"
    assert error(*search_args(setup, run, "--quiet", *extra), capsys=capsys) == message
    assert not run.exists() or not any(run.iterdir())  # nothing written


@pytest.mark.parametrize("command,message", [
    ("prune", f"argument --seed: {SEED_RANGE}, got -1 (see: amc prune --help)"),
    ("bench", f"argument --seed: {SEED_RANGE}, got -1 (see: amc bench prune --help)"),
])
def test_seed_out_of_range_in_other_commands(setup, tmp_path, capsys, command, message):
    args = search_args(setup, tmp_path / "run", "--seed", "-1", "--json")
    args = [a for a in args if a not in ("--run", str(tmp_path / "run"))][1:]
    head = ["prune", "--policy", "uniform:0.5", "--out", tmp_path / "out"] if command == "prune" else ["bench", "prune"]
    assert error(*head, *args, capsys=capsys) == message


# --------------------------------------------------------------------------- paths

@pytest.mark.parametrize("how", ["folder", "chmod-000"])
def test_weights_path_that_cannot_be_read(setup, tmp_path, capsys, how):
    if how == "chmod-000":
        if os.geteuid() == 0:
            pytest.skip("root reads files whatever their mode; the folder case tests the same refusal")
        weights = tmp_path / "locked.pt"
        weights.write_bytes(Path(setup["weights"]).read_bytes())
        weights.chmod(0)
    else:
        weights = tmp_path / "weights.pt"
        weights.mkdir()
    args = search_args(setup, tmp_path / "run", "--quiet")
    args[args.index("--weights") + 1] = str(weights)
    assert error(*args, capsys=capsys) == f"cannot read weights file: {weights}"


def test_run_folder_under_a_regular_file(setup, tmp_path, capsys):
    blocker = tmp_path / "somefile"
    blocker.write_text("")
    assert error(*search_args(setup, blocker / "sub", "--quiet"), capsys=capsys) == (
        f"cannot write to {blocker / 'sub'}: Not a directory")
    assert error(*search_args(setup, blocker, "--quiet"), capsys=capsys) == f"{blocker} exists and is not a folder"
    assert blocker.read_text() == ""


# --------------------------------------------------------------------------- weights and images that do not fit

def test_weights_for_another_number_of_classes(setup, tmp_path, capsys):
    namespace: dict = {}
    exec(TINY_FACTORY, namespace)
    model = namespace["factory"]()
    model[-1] = nn.Linear(16, 5)  # a 5-class head on 10-class data
    torch.save(model.state_dict(), tmp_path / "five.pt")
    for command in ("search", "prune"):
        args = search_args(setup, tmp_path / "run", "--quiet")
        args[args.index("--weights") + 1] = str(tmp_path / "five.pt")
        if command == "prune":
            args = ["prune", "--policy", "uniform:0.5", "--out", str(tmp_path / "out"), *args[1:-3]]
        assert error(*args, capsys=capsys) == ("weights five.pt do not fit the model: 2 shape mismatches "
                                               "(first: 10.weight is (5, 16), model wants (10, 16))")


def test_cifar_shaped_weights_on_one_channel_images(setup, tmp_path, capsys):
    """A zoo model is built for the data's channels: 3-channel (CIFAR) weights do not load."""
    torch.save(build_model(ModelSpec("plain20", 3, 10, 0.25)).state_dict(), tmp_path / "rgb.pt")
    args = search_args(setup, tmp_path / "run", "--quiet")
    args[args.index("--model") + 1] = "plain20"
    args[args.index("--weights") + 1] = str(tmp_path / "rgb.pt")
    assert error(*args, "--width", "0.25", capsys=capsys) == (
        "weights rgb.pt do not fit the model: 1 shape mismatches (first: conv1.weight is (4, 3, 3, 3), "
        "model wants (4, 1, 3, 3))")


def test_three_channel_user_model_on_one_channel_images(setup, tmp_path, capsys):
    (tmp_path / "rgb.py").write_text(TINY_FACTORY.replace("nn.Conv2d(1, 8", "nn.Conv2d(3, 8"))
    args = search_args(setup, tmp_path / "run", "--quiet")
    args[args.index("--model") + 1] = f"{tmp_path / 'rgb.py'}:factory"
    args[args.index("--weights"):args.index("--weights") + 2] = []
    assert error(*args, capsys=capsys).startswith(
        "images of shape (1, 28, 28) from fashion-mnist do not fit the model: ")


# --------------------------------------------------------------------------- a full disk

def enospc_on(monkeypatch, suffix: str, after: int = 0) -> None:
    """``os.replace`` onto a path ending in ``suffix`` fails with ENOSPC after ``after`` successes."""
    replace, calls = os.replace, []

    def full(src, dst, *args, **kwargs):
        if str(dst).endswith(suffix):
            calls.append(dst)
            if len(calls) > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)


def test_disk_full_while_pruning_leaves_no_half_written_file(setup, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    enospc_on(monkeypatch, "")
    args = ["prune", "--policy", "uniform:0.5", "--out", out, "--json",
            *search_args(setup, tmp_path / "r", "--quiet")[1:-3]]
    assert error(*args, capsys=capsys) == f"cannot write {out / 'model.safetensors'}: No space left on device"
    assert list(out.iterdir()) == []


def test_disk_full_while_exporting_onnx(setup, tmp_path, capsys, monkeypatch):
    pruned, out = tmp_path / "pruned", tmp_path / "out"
    assert main(["prune", "--policy", "uniform:0.5", "--out", str(pruned), "--json",
                 *search_args(setup, tmp_path / "r", "--quiet")[1:-3]]) == 0
    enospc_on(monkeypatch, "model.onnx")
    assert error("export", "--checkpoint", pruned, "--out", out, "--exporter", "torchscript", capsys=capsys) == (
        f"cannot write {out / 'model.onnx'}: No space left on device")
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]  # no model.onnx, no model.json
    assert tmp_files(out) == []


def test_disk_full_in_the_middle_of_a_search_then_resume(setup, tmp_path, capsys, monkeypatch):
    opts = ("--algo", "random", "--episodes", "6", "--seed", "2", "--quiet")
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(search_args(setup, reference, *opts)) == 0
    enospc_on(monkeypatch, "state.pt", after=3)  # the states of 0, 1 and 2 episodes land, the next fails
    assert error(*search_args(setup, run, *opts), capsys=capsys) == (
        f"cannot write {run / 'state.pt'}: No space left on device")
    assert tmp_files(run) == []
    assert torch.load(run / "state.pt", weights_only=True)["log"]["episodes"] == 2
    monkeypatch.undo()  # space freed
    assert main(["search", "--resume", str(run), "--quiet"]) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_episodes(run)) == strip(read_episodes(reference))


def test_disk_full_when_the_search_starts(setup, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    enospc_on(monkeypatch, "config.json")
    assert error(*search_args(setup, run, "--algo", "random", "--episodes", "2", "--quiet"), capsys=capsys) == (
        f"cannot write {run / 'config.json'}: No space left on device")
    assert list(run.iterdir()) == []


# --------------------------------------------------------------------------- a NaN reward

def test_nan_reward_gets_the_worst_reward_and_never_reaches_the_buffer(setup, tmp_path, capsys, monkeypatch):
    from envs.channel_pruning import ChannelPruningEnv

    top1, calls = ChannelPruningEnv.reward_top1, []

    def nan_once(self, model):
        calls.append(1)
        # call 1 scores the unpruned model; call 4 is episode 2, the first after the warm-up
        return float("nan") if len(calls) == 4 else top1(self, model)

    monkeypatch.setattr(ChannelPruningEnv, "reward_top1", nan_once)
    run = tmp_path / "run"
    res = amc(*search_args(setup, run, "--episodes", "5", "--warmup", "2", "--quiet", "--json"), capsys=capsys)
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [
        "warning: episode 2: the reward-set evaluation gave reward nan, top-1 nan; scored as the worst reward -1.0000"]

    def strict(text: str) -> dict:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in episodes.jsonl"))

    rows = [strict(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    assert rows[2]["reward"] == -1.0 and rows[2]["reward_top1"] == 0.0
    assert rows[2]["nonfinite"] == {"reward": "nan", "reward_top1": "nan"}
    assert all("nonfinite" not in r and -1.0 < r["reward"] < 0 for i, r in enumerate(rows) if i != 2)
    buffer = torch.load(run / "state.pt", weights_only=True)["agent"]["buffer"]
    stored = buffer["arrays"]["rewards"][: 5 * 3]
    assert torch.isfinite(stored).all()
    assert (stored[6:9] == -1.0).all()  # episode 2's three transitions carry the penalty


def test_the_buffer_refuses_a_non_finite_reward():
    from gymnasium import spaces

    from agents.buffers import EpisodeRewardBuffer

    buf = EpisodeRewardBuffer(9, spaces.Box(0, 1, (11,), np.float32), spaces.Box(0, 1, (1,), np.float32), device="cpu")
    obs = np.zeros((1, 11), np.float32)
    with pytest.raises(ValueError, match="non-finite episode reward nan"):
        buf.add(obs, obs, np.zeros((1, 1), np.float32), np.array([np.nan], np.float32), np.array([True]), [{}])
    assert buf.size() == 0 and buf.pending == []


# --------------------------------------------------------------------------- bounded memory

def test_the_cache_bound_refuses_before_calibrating(setup, tmp_path, capsys):
    message = ("the least-squares cache would take 232.8 KiB, over the limit of 10.2 KiB (--max-cache-mb); "
               "raise the limit, or prune without reconstruction (--no-reconstruct)")
    args = search_args(setup, tmp_path / "run", "--quiet", "--max-cache-mb", "0.01")
    assert error(*args, capsys=capsys) == message
    prune = ["prune", "--policy", "uniform:0.5", "--out", tmp_path / "out", *args[1:-5], "--max-cache-mb", "0.01"]
    assert error(*prune, capsys=capsys) == message
    assert amc(*prune[:-2], "--no-reconstruct", "--json", capsys=capsys).returncode == 0


def test_cache_estimate_is_the_cache_size():
    from amc.pruner import ChannelPruner
    from amc.reconstruct import FeatureCache

    for name in ("resnet20", "mobilenetv2"):
        model = build_model(ModelSpec(name, 1, 10, 0.25)).eval()
        pruner = ChannelPruner(model, (1, 28, 28), [torch.randn(2, 1, 28, 28)], points_per_image=2)
        assert FeatureCache.estimate_nbytes(model, pruner.graph) == pruner.cache.nbytes


def test_bench_search_reports_time_and_memory(setup, tmp_path, capsys):
    args = search_args(setup, tmp_path / "run", "--algo", "random", "--episodes", "2", "--threads", "1", "--json")[1:]
    args = args[: args.index("--run")] + args[args.index("--run") + 2:]
    res = amc("bench", "search", *args, capsys=capsys)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["episodes"] == 2 and out["layers"] == 3 and out["seconds_per_episode"] > 0
    assert out["budget"] == "flops" and out["bn_recal"] == 0  # what was timed
    assert 50 < out["peak_rss_mib"] < 8000 and out["feature_cache_mib"] == pytest.approx(232.8 / 1024, abs=1e-2)
    # the cost of keeping it resumable: a capture before the first episode and after each, each
    # written (--save-every 1)
    save = out["state_save"]
    assert save["captures"] == save["writes"] == 3 and save["capture_ms_median"] > 0 and save["write_ms_median"] > 0
    assert 0 < save["state_mib"] < 100
    bad = amc("bench", "search", *args, "--max-cache-mb", "0.01", capsys=capsys)
    assert assert_one_error_line(bad).startswith("the least-squares cache would take 232.8 KiB")

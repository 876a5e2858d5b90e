"""``amc finetune``: amc train's loop on the checkpoint's own data split, selected on the reward set."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import amc
import amc.train
from amc.cli import main

from helpers import TINY_TEST, in_process_error, pruned_checkpoint, write_idx

REWARD_SET = 300  # differs from TINY_TEST, so the evaluations below tell the reward set from the test set


def test_finetune_one_epoch(run_amc, tmp_path: Path, tiny_data_dir: Path, pruned: Path) -> None:
    out = tmp_path / "ft"
    proc = run_amc("finetune", "--checkpoint", pruned, "--epochs", "1", "--batch-size", "256", "--out", out,
                   "--data-dir", tiny_data_dir, "--json", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    meta = json.loads((out / "model.json").read_text())
    src = json.loads((pruned / "model.json").read_text())

    assert meta["kind"] == "finetuned"
    assert meta["source"]["checkpoint"] == str(pruned.resolve()) and meta["source"]["kind"] == "pruned"
    assert meta["finetune"]["epochs"] == 1 and meta["finetune"]["config"]["lr"] == 0.01
    assert meta["reward_top1_before"] == pytest.approx(src["reward_top1"])  # same weights, same reward set
    assert meta["reward_top1"] == max(h["reward_top1"] for h in meta["finetune"]["history"])
    for key in ("reward_top1_before", "reward_top1", "test_top1"):
        assert res[key] == meta[key]
    for key in ("model", "channels", "input_shape", "split", "policy", "base", "flops", "params"):
        assert meta[key] == src[key], key
    assert list((out / "tb").glob("events.out.tfevents.*"))

    # same slim architecture, new weights
    before, after = amc.load_pruned(pruned), amc.load_pruned(out)
    assert [p.shape for p in before.parameters()] == [p.shape for p in after.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))


def test_selection_never_looks_at_the_test_set(monkeypatch, tmp_path: Path, tiny_data_dir: Path,
                                               pruned: Path) -> None:
    seen: list[int] = []
    evaluate = amc.train.evaluate

    def spy(model, data, *args, **kwargs):
        seen.append(len(data))
        return evaluate(model, data, *args, **kwargs)

    monkeypatch.setattr(amc.train, "evaluate", spy)
    assert main(["finetune", "--checkpoint", str(pruned), "--epochs", "2", "--batch-size", "512", "--out",
                 str(tmp_path / "ft"), "--data-dir", str(tiny_data_dir), "--json"]) == 0
    # before, after epoch 1, after epoch 2: the reward set; then the test set, once, for the report
    assert seen == [REWARD_SET, REWARD_SET, REWARD_SET, TINY_TEST]


def test_other_data_than_recorded_is_refused(capsys, tmp_path: Path, pruned: Path) -> None:
    rng = np.random.default_rng(1)
    for split, n in (("train", 5000), ("t10k", 100)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    in_process_error(capsys, "the fashion-mnist data found here gives a different reward set than the checkpoint "
                              "recorded (other data or another split); pass the original --data-dir",
                      "finetune", "--checkpoint", pruned, "--epochs", "1", "--out", tmp_path / "ft",
                      "--data-dir", tmp_path)
    assert not (tmp_path / "ft").exists()


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("model.json", "model.safetensors"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_truncated_weights(capsys, tmp_path: Path, tiny_data_dir: Path, pruned: Path) -> None:
    bad = _copy(pruned, tmp_path / "bad")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:100])
    msg = in_process_error(capsys, None, "finetune", "--checkpoint", bad, "--epochs", "1", "--out",
                            tmp_path / "ft", "--data-dir", tiny_data_dir)
    assert msg.startswith(f"corrupt or truncated safetensors file {bad / 'model.safetensors'}: ")
    assert not (tmp_path / "ft").exists()


def test_corrupt_or_missing_files(capsys, tmp_path: Path, tiny_data_dir: Path, pruned: Path) -> None:
    bad = _copy(pruned, tmp_path / "bad")
    (bad / "model.json").write_text('{"kind": "pruned", "model": ')
    msg = in_process_error(capsys, None, "finetune", "--checkpoint", bad, "--epochs", "1",
                            "--out", tmp_path / "ft", "--data-dir", tiny_data_dir)
    assert msg.startswith(f"corrupt JSON in {bad / 'model.json'}: ")
    (bad / "model.json").unlink()
    in_process_error(capsys, f"file not found: {bad / 'model.json'}", "finetune", "--checkpoint", bad,
                      "--epochs", "1", "--out", tmp_path / "ft")
    in_process_error(capsys, f"checkpoint folder not found: {tmp_path / 'nope'}", "finetune", "--checkpoint",
                      tmp_path / "nope", "--epochs", "1", "--out", tmp_path / "ft")
    # a pickle where the weights belong is not unpickled
    torch.save({"0.weight": torch.zeros(1)}, bad / "model.safetensors")
    (bad / "model.json").write_bytes((pruned / "model.json").read_bytes())
    msg = in_process_error(capsys, None, "finetune", "--checkpoint", bad, "--epochs", "1", "--out",
                            tmp_path / "ft", "--data-dir", tiny_data_dir)
    assert msg.startswith(f"corrupt or truncated safetensors file {bad / 'model.safetensors'}: ")


def test_bad_numbers(capsys, tmp_path: Path, pruned: Path) -> None:
    args = ("finetune", "--checkpoint", pruned, "--out", tmp_path / "ft")
    in_process_error(capsys, "--epochs must be >= 1, got 0", *args, "--epochs", "0")
    in_process_error(capsys, "--lr must be a finite number, got nan", *args, "--epochs", "1", "--lr", "nan")
    in_process_error(capsys, "--lr must be > 0, got 0.0", *args, "--epochs", "1", "--lr", "0")
    in_process_error(capsys, "--batch-size must be >= 1, got 0", *args, "--epochs", "1", "--batch-size", "0")


def test_a_base_checkpoint_is_not_a_slim_one(capsys, tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "model.json").write_text(json.dumps({"kind": "base", "model": {"name": "plain20"}}))
    in_process_error(capsys, f"{base} holds an unpruned model from amc train, not a slim checkpoint (prune it "
                              f"first: amc prune --weights {base / 'model.safetensors'} ...)",
                      "finetune", "--checkpoint", base, "--epochs", "1", "--out", tmp_path / "ft")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir: Path) -> Path:
    return pruned_checkpoint(tmp_path_factory.mktemp("ckpt"), tiny_data_dir, REWARD_SET)


def test_torchrun_two_processes_train_as_one_with_the_same_global_batch(run_amc, tmp_path: Path,
                                                                        tiny_data_dir: Path, pruned: Path) -> None:
    """gloo on CPU: the two ranks end identical, and the loss follows a one-process run's."""
    import subprocess
    import sys

    from helpers import SUBPROCESS_ENV

    common = ["finetune", "--checkpoint", str(pruned), "--epochs", "2", "--batch-size", "64", "--data-dir",
              str(tiny_data_dir), "--json", "--threads", "1"]
    one = run_amc(*common, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "amc", *common, "--out", str(tmp_path / "two")], cwd=tmp_path, env=SUBPROCESS_ENV,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    assert len([l for l in two.stdout.splitlines() if l.startswith("{")]) == 1  # rank 0 alone prints
    m1 = json.loads((tmp_path / "one" / "model.json").read_text())["finetune"]
    m2 = json.loads((tmp_path / "two" / "model.json").read_text())["finetune"]
    assert "distributed" not in m1
    assert m2["distributed"] == {"world_size": 2, "backend": "gloo", "identical_weights": True}
    assert m2["config"] == m1["config"]  # the same global batch and schedule
    # the same images in the same steps; only BatchNorm's batch statistics differ (32 images per
    # rank instead of 64), which moves the loss by far less than 2%
    for h1, h2 in zip(m1["history"], m2["history"], strict=True):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=0.02)

"""``amc train`` and ``amc eval`` end to end, and every user error as one ``error:`` line.

Each test runs the real command in a subprocess (``python -m amc``) on tiny models and data.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from amc.checkpoint import shipped_weights
from amc.flops import count_macs, count_params
from amc.models import ZOO, ModelSpec, build_model

from helpers import TINY_NET, TINY_TEST, TINY_TRAIN

MODEL_JSON_KEYS = {"model", "dataset", "split", "flops", "params", "reward_top1", "test_top1"}


def _last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- end to end

def test_user_factory_with_pt_weights_evaluates(run_amc, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(f"{TINY_NET}:factory"))
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    proc = run_amc("eval", "--model", f"{TINY_NET}:factory", "--weights", tmp_path / "tiny.pt", "--json")
    assert proc.returncode == 0, proc.stderr
    res = _last_json_line(proc.stdout)
    assert 0.0 <= res["top1"] <= 100.0
    assert res["flops"] == count_macs(model, (1, 28, 28)) and res["params"] == count_params(model)
    assert res["dataset"] == "fashion-mnist" and res["weights"] == str(tmp_path / "tiny.pt")


def test_train_writes_a_checkpoint_then_refuses_to_overwrite_it(run_amc, tmp_path: Path,
                                                                 tiny_data_dir: Path, cli_error) -> None:
    out = tmp_path / "base"
    train = ("train", "--model", "plain20", "--width", "0.25", "--data-dir", tiny_data_dir,
             "--reward-set-size", str(TINY_TRAIN - 500), "--epochs", "1", "--out", out, "--json")
    proc = run_amc(*train)
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").is_file()
    meta = json.loads((out / "model.json").read_text())
    assert MODEL_JSON_KEYS <= set(meta)
    assert meta["model"] == {"name": "plain20", "in_channels": 1, "num_classes": 10, "width": 0.25}
    assert meta["split"]["train_size"] == 500 and meta["split"]["test_size"] == TINY_TEST
    assert meta["flops"] == count_macs(build_model(ModelSpec.from_dict(meta["model"])), (1, 28, 28))
    assert list((out / "tb").glob("events.out.tfevents.*"))
    res = _last_json_line(proc.stdout)
    assert res["test_top1"] == meta["test_top1"] and res["flops"] == meta["flops"]

    # the checkpoint evaluates to the test accuracy it recorded
    proc = run_amc("eval", "--model", "plain20", "--width", "0.25", "--weights", out / "model.safetensors",
                   "--data-dir", tiny_data_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    assert _last_json_line(proc.stdout)["top1"] == pytest.approx(meta["test_top1"])

    before = sorted(p.name for p in out.iterdir())
    cli_error(run_amc(*train), f"{out} already exists and is not empty; choose another --out or delete it")
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.slow
def test_train_on_the_real_training_split(run_amc, tmp_path: Path) -> None:
    out = tmp_path / "base"
    proc = run_amc("train", "--model", "plain20", "--width", "0.25", "--reward-set-size", "59500",
                   "--epochs", "1", "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "model.json").read_text())
    assert meta["split"]["train_size"] == 500 and meta["split"]["test_size"] == 10000


# --------------------------------------------------------------------------- one error line each

def test_unknown_model(run_amc, tiny_data_dir: Path, cli_error) -> None:
    cli_error(run_amc("eval", "--model", "resnet21", "--data-dir", tiny_data_dir),
              "unknown model 'resnet21'; choose one of mobilenet, mobilenetv2, plain20, resnet20, resnet56, "
              "shufflenetv1, shufflenetv2, vgg16, tv:NAME or path/to/file.py:factory")


def test_unknown_dataset(run_amc, cli_error) -> None:
    cli_error(run_amc("eval", "--dataset", "mnist2"),
              "unknown dataset 'mnist2'; choose fashion-mnist, cifar10 or imagefolder:PATH")


def test_missing_weights_file(run_amc, tmp_path: Path, tiny_data_dir: Path, cli_error) -> None:
    cli_error(run_amc("eval", "--model", "plain20", "--weights", tmp_path / "nope.pt", "--data-dir", tiny_data_dir),
              f"weights file not found: {tmp_path / 'nope.pt'}")


def test_weights_that_do_not_fit(run_amc, tmp_path: Path, tiny_data_dir: Path, cli_error) -> None:
    torch.save(build_model(ModelSpec("plain20", 1, 5, 0.25)).state_dict(), tmp_path / "five.pt")
    cli_error(run_amc("eval", "--model", "plain20", "--width", "0.25", "--weights", tmp_path / "five.pt",
                      "--data-dir", tiny_data_dir),
              "weights five.pt do not fit the model: 2 shape mismatches (first: fc.weight is (5, 16), "
              "model wants (10, 16))")


def test_weights_that_would_run_code(run_amc, tmp_path: Path, tiny_data_dir: Path, cli_error) -> None:
    marker = tmp_path / "marker"

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"fc.weight": torch.zeros(1), "x": RunsCode()}, tmp_path / "evil.pt")
    cli_error(run_amc("eval", "--model", "plain20", "--width", "0.25", "--weights", tmp_path / "evil.pt",
                      "--data-dir", tiny_data_dir),
              f"refusing to load {tmp_path / 'evil.pt'}: it holds pickled objects beyond plain tensors "
              "(only state_dicts load, with weights_only=True)")
    assert not marker.exists()


def test_factory_that_raises(run_amc, tiny_data_dir: Path, cli_error) -> None:
    cli_error(run_amc("eval", "--model", f"{TINY_NET}:boom", "--data-dir", tiny_data_dir),
              f"model factory {TINY_NET}:boom raised RuntimeError: boom")


def test_factory_returning_a_non_module(run_amc, tiny_data_dir: Path, cli_error) -> None:
    cli_error(run_amc("eval", "--model", f"{TINY_NET}:not_a_module", "--data-dir", tiny_data_dir),
              f"model factory {TINY_NET}:not_a_module returned int, not an nn.Module")


def test_model_that_does_not_fit_the_images(run_amc, tmp_path: Path, tiny_data_dir: Path, cli_error) -> None:
    (tmp_path / "net.py").write_text("from torch import nn\n\ndef rgb():\n"
                                     "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(10))\n")
    msg = cli_error(run_amc("eval", "--model", f"{tmp_path / 'net.py'}:rgb", "--data-dir", tiny_data_dir))
    assert msg.startswith("images of shape (1, 28, 28) from fashion-mnist do not fit the model: ")


def test_data_not_found(run_amc, tmp_path: Path, cli_error) -> None:
    (tmp_path / "env").mkdir()
    (tmp_path / "dir").mkdir()
    env = {"AMC_DATA": str(tmp_path / "env"), "AMC_NO_SYSTEM_DATA": "1", "AMC_OFFLINE": "1"}
    cli_error(run_amc("eval", "--data-dir", tmp_path / "dir", env=env),
              "Fashion-MNIST not found and could not be downloaded (ConnectionError: AMC_OFFLINE is set); "
              "install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
              "or pass --data-dir with the idx files")


def test_reward_set_size_out_of_range(run_amc, tiny_data_dir: Path, cli_error) -> None:
    cli_error(run_amc("eval", "--data-dir", tiny_data_dir, "--reward-set-size", str(TINY_TRAIN)),
              f"--reward-set-size must be in [1, {TINY_TRAIN - 1}], got {TINY_TRAIN}")


def test_zoo_model_without_weights(run_amc, tiny_data_dir: Path, cli_error) -> None:
    name = next((n for n in sorted(ZOO) if shipped_weights(n, "fashion-mnist") is None), None)
    if name is None:
        pytest.skip("every zoo model ships weights for fashion-mnist")
    cli_error(run_amc("eval", "--model", name, "--data-dir", tiny_data_dir),
              f"no shipped weights for {name} on fashion-mnist; pass --weights "
              f"(train some with: amc train --model {name} --dataset fashion-mnist)")


def test_unknown_flag_is_one_error_line(run_amc, cli_error) -> None:
    cli_error(run_amc("eval", "--bogus"), "unrecognized arguments: --bogus (see: amc --help)")


def test_missing_required_option(run_amc, cli_error) -> None:
    cli_error(run_amc("train", "--model", "plain20"),
              "the following arguments are required: --out (see: amc train --help)")


def test_every_help_text_renders_without_formatting_leftovers() -> None:
    """argparse %-formats help strings but not descriptions: a '%%' there is printed as typed."""
    import argparse

    from amc.cli import build_parser

    def parsers(p: argparse.ArgumentParser):
        yield p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sp in a.choices.values():
                    yield from parsers(sp)

    seen = list(parsers(build_parser()))
    assert len(seen) > 15 and any(p.prog == "amc bench compare" for p in seen)
    for p in seen:
        text = p.format_help()
        assert "%%" not in text and "%(" not in text, p.prog

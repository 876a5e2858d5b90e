"""``amc export``: safetensors + JSON + ONNX that rebuild the same model, and one error line per bad input.

The slim checkpoint comes from ``amc prune`` on the two-conv user model of
``tests/fixtures/tiny_net.py``, run in-process once per module.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import amc
from amc.cli import main
from amc.export import check_onnx, export_onnx
from amc.models import ModelSpec, build_model

from helpers import SUBPROCESS_ENV, TINY_NET, in_process_error

MODEL = f"{TINY_NET}:factory"
PRUNE_ARGS = ("--reward-set-size", "300", "--calib-batches", "2", "--calib-batch-size", "8", "--threads", "1")


def _amc(*args) -> subprocess.CompletedProcess:
    """``amc ARGS`` in this process (much faster than a subprocess); stdout and stderr go to pytest's capture."""
    return subprocess.CompletedProcess(args, main([str(a) for a in args]))


def _outputs(model: torch.nn.Module, batch: int = 5) -> torch.Tensor:
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = build_model(ModelSpec(MODEL, 1, 10))
    for m in net.modules():  # non-default BN statistics, so a round trip that dropped buffers would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("base") / "tiny.pt"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir: Path, base_weights: Path) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "pruned"
    assert _amc("prune", "--model", MODEL, "--weights", base_weights, "--data-dir", tiny_data_dir,
                "--policy", "uniform:0.5", "--out", out, "--json", *PRUNE_ARGS).returncode == 0
    return out


# --------------------------------------------------------------------------- end to end

def test_export_checkpoint_round_trips_and_onnx_matches(run_amc, tmp_path: Path, pruned: Path) -> None:
    out = tmp_path / "exported"
    proc = run_amc("export", "--checkpoint", pruned, "--out", out, "--json", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx", "model.safetensors"]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    meta = json.loads((out / "model.json").read_text())
    src = json.loads((pruned / "model.json").read_text())

    assert res["exporter"] == "dynamo" and res["opset"] >= 17
    assert 0 <= res["onnx_max_abs_diff"] <= 1e-4 and res["onnx_atol"] == 1e-4
    assert meta["kind"] == "exported" and meta["source"] == {"checkpoint": str(pruned.resolve()), "kind": "pruned"}
    assert meta["onnx"]["check"]["max_abs_diff"] == res["onnx_max_abs_diff"] and meta["onnx"]["check"]["passed"]
    assert meta["onnx"]["input_shape"] == ["batch", 1, 28, 28]
    assert meta["onnx"]["normalize"] == {"mean": src["split"]["mean"], "std": src["split"]["std"]}
    for key in ("model", "channels", "policy", "input_shape", "split", "base", "flops", "params", "reward_top1",
                "test_top1"):
        assert meta[key] == src[key], key

    # amc.load_pruned rebuilds the very same model from the export folder
    original, exported = amc.load_pruned(pruned), amc.load_pruned(out)
    assert torch.equal(_outputs(original), _outputs(exported))
    assert [c["kept"] for c in meta["channels"]] == [exported[0].out_channels, exported[3].out_channels]

    # the ONNX file runs at another batch size in a Python that has neither torch nor amc
    x = np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = ("import sys; sys.modules['torch'] = sys.modules['amc'] = None\n"
              "import numpy as np, onnxruntime as ort\n"
              f"s = ort.InferenceSession({str(out / 'model.onnx')!r}, providers=['CPUExecutionProvider'])\n"
              f"y = s.run(['logits'], {{'input': np.load({str(tmp_path / 'x.npy')!r})}})[0]\n"
              f"np.save({str(tmp_path / 'y.npy')!r}, y)\n"
              "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n")
    ort_proc = subprocess.run([sys.executable, "-c", script], env=SUBPROCESS_ENV, capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)
    assert ort_proc.returncode == 0, ort_proc.stderr
    with torch.no_grad():
        ref = exported(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ref, rtol=0, atol=1e-4)


def _write_run(run: Path, weights: Path, data_dir: Path, seed: int = 3, drop: tuple[str, ...] = ()) -> None:
    """A run folder as ``amc search`` writes it: config.json (resolved settings) and best_policy.json."""
    run.mkdir(parents=True)
    cfg = {"model": MODEL, "weights": str(weights), "width": None, "dataset": "fashion-mnist",
           "data_dir": str(data_dir), "mean": None, "std": None, "image_size": 224, "reward_set_size": 300,
           "split_seed": 0, "reward": "acc", "target": 0.5, "channel_round": 1, "coupled": "skip",
           "criterion": "l1", "reconstruct": True, "calib_batches": 2, "calib_batch_size": 8,
           "points_per_image": 10, "algo": "ddpg", "seed": seed}
    for key in drop:
        cfg.pop(key)
    (run / "config.json").write_text(json.dumps({
        "config": cfg, "algo": "ddpg", "model": {"name": MODEL, "in_channels": 1, "num_classes": 10, "width": 1.0},
        "weights": str(weights)}))
    (run / "best_policy.json").write_text(json.dumps({
        "layers": [{"group": 0, "layer": "3", "channels": 4, "kept": 3, "ratio": 0.75},
                   {"group": 1, "layer": "7", "channels": 8, "kept": 3, "ratio": 0.375}],
        "reward_top1": 12.5, "episode": 7}))


def test_export_run_equals_prune_with_the_searchs_settings(tmp_path: Path, tiny_data_dir: Path,
                                                           base_weights: Path) -> None:
    run = tmp_path / "run"
    _write_run(run, base_weights, tiny_data_dir, seed=3)
    out = tmp_path / "exported"
    assert _amc("export", "--run", run, "--out", out, "--exporter", "torchscript", "--json",
                "--threads", "1").returncode == 0
    # the search seeded its calibration sampling with its seed: amc prune needs the same seed
    assert _amc("prune", "--model", MODEL, "--weights", base_weights, "--data-dir", tiny_data_dir, "--policy",
                run / "best_policy.json", "--seed", "3", "--out", tmp_path / "pruned", "--json",
                *PRUNE_ARGS).returncode == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["source"] == {"run": str(run.resolve()), "policy": str((run / "best_policy.json").resolve()),
                              "search_reward_top1": 12.5}
    assert [c["kept"] for c in meta["channels"]] == [3, 3]
    assert meta["base"]["weights"] == str(base_weights.resolve())
    assert torch.equal(_outputs(amc.load_pruned(out)), _outputs(amc.load_pruned(tmp_path / "pruned")))
    assert meta["onnx"]["exporter"] == "torchscript" and meta["onnx"]["check"]["max_abs_diff"] <= 1e-4


def test_export_run_of_a_real_search(tmp_path: Path, tiny_data_dir: Path, base_weights: Path) -> None:
    """The contract with ``amc search``: whatever it writes into its run folder, export reads."""
    run = tmp_path / "run"
    assert _amc("search", "--model", MODEL, "--weights", base_weights, "--data-dir", tiny_data_dir,
                "--algo", "random", "--episodes", "2", "--run", run, "--quiet", "--json", *PRUNE_ARGS).returncode == 0
    best = json.loads((run / "best_policy.json").read_text())
    out = tmp_path / "exported"
    assert _amc("export", "--run", run, "--out", out, "--exporter", "torchscript", "--json").returncode == 0
    meta = json.loads((out / "model.json").read_text())
    assert [c["kept"] for c in meta["channels"]] == [layer["kept"] for layer in best["layers"]]
    # the same policy, calibration and reward set: the search's number comes back
    assert meta["reward_top1"] == pytest.approx(best["reward_top1"])


def test_onnx_check_catches_a_file_that_differs(tmp_path: Path, pruned: Path) -> None:
    model = amc.load_pruned(pruned)
    export_onnx(model, (1, 28, 28), tmp_path / "m.onnx", exporter="torchscript")
    assert check_onnx(tmp_path / "m.onnx", model, (1, 28, 28))["passed"]
    with torch.no_grad():
        model[-1].bias += 1e-3
    check = check_onnx(tmp_path / "m.onnx", model, (1, 28, 28))
    assert not check["passed"] and check["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)


# --------------------------------------------------------------------------- one error line each

def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("model.json", "model.safetensors"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_truncated_weights(capsys, tmp_path: Path, pruned: Path) -> None:
    bad = _copy(pruned, tmp_path / "bad")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    msg = in_process_error(capsys, None, "export", "--checkpoint", bad, "--out", tmp_path / "out")
    assert msg.startswith(f"corrupt or truncated safetensors file {bad / 'model.safetensors'}: ")
    assert not (tmp_path / "out").exists()


def test_corrupt_model_json(run_amc, cli_error, tmp_path: Path, pruned: Path) -> None:
    bad = _copy(pruned, tmp_path / "bad")
    text = (bad / "model.json").read_text()
    (bad / "model.json").write_text(text[: len(text) // 2])
    msg = cli_error(run_amc("export", "--checkpoint", bad, "--out", tmp_path / "out"))
    assert msg.startswith(f"corrupt JSON in {bad / 'model.json'}: ")


def test_model_json_with_wrong_channels(capsys, tmp_path: Path, pruned: Path) -> None:
    bad = _copy(pruned, tmp_path / "bad")
    meta = json.loads((bad / "model.json").read_text())
    meta["channels"][1]["kept"] = 99
    (bad / "model.json").write_text(json.dumps(meta))
    in_process_error(capsys, "model.json: layer 7: kept must be an integer in [1, 8]",
                      "export", "--checkpoint", bad, "--out", tmp_path / "out")


def test_a_pickle_in_place_of_the_safetensors_is_refused(capsys, tmp_path: Path, pruned: Path) -> None:
    bad = _copy(pruned, tmp_path / "bad")
    marker = tmp_path / "marker"

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"x": RunsCode()}, bad / "model.safetensors")
    msg = in_process_error(capsys, None, "export", "--checkpoint", bad, "--out", tmp_path / "out")
    assert msg.startswith(f"corrupt or truncated safetensors file {bad / 'model.safetensors'}: ")
    assert not marker.exists()


def test_run_whose_weights_are_a_pickle_that_runs_code(capsys, tmp_path: Path, tiny_data_dir: Path) -> None:
    marker = tmp_path / "marker"

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"0.weight": RunsCode()}, tmp_path / "evil.pt")
    _write_run(tmp_path / "run", tmp_path / "evil.pt", tiny_data_dir)
    in_process_error(capsys, f"refusing to load {tmp_path / 'evil.pt'}: it holds pickled objects beyond plain "
                              "tensors (only state_dicts load, with weights_only=True)",
                      "export", "--run", tmp_path / "run", "--out", tmp_path / "out")
    assert not marker.exists()


def test_run_config_lacking_settings(capsys, tmp_path: Path, tiny_data_dir: Path, base_weights: Path) -> None:
    run = tmp_path / "run"
    _write_run(run, base_weights, tiny_data_dir, drop=("coupled", "seed"))
    in_process_error(capsys, f"{run / 'config.json'} lacks coupled, seed; was it written by amc search?",
                      "export", "--run", run, "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_run_without_config_or_policy(capsys, tmp_path: Path, tiny_data_dir: Path, base_weights: Path) -> None:
    (tmp_path / "empty").mkdir()
    in_process_error(capsys, f"file not found: {tmp_path / 'empty' / 'config.json'}",
                      "export", "--run", tmp_path / "empty", "--out", tmp_path / "out")
    in_process_error(capsys, f"run folder not found: {tmp_path / 'nope'}",
                      "export", "--run", tmp_path / "nope", "--out", tmp_path / "out")
    run = tmp_path / "run"
    _write_run(run, base_weights, tiny_data_dir)
    (run / "best_policy.json").unlink()
    in_process_error(capsys, f"policy file not found: {run / 'best_policy.json'} (has the search finished an "
                              "episode?)", "export", "--run", run, "--out", tmp_path / "out")


def test_option_misuse(capsys, tmp_path: Path, pruned: Path) -> None:
    in_process_error(capsys, "--policy goes with --run (a checkpoint already holds its policy)",
                      "export", "--checkpoint", pruned, "--policy", "p.json", "--out", tmp_path / "out")
    in_process_error(capsys, "argument --checkpoint: not allowed with argument --run (see: amc export --help)",
                      "export", "--run", tmp_path, "--checkpoint", pruned, "--out", tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    in_process_error(capsys, f"{tmp_path / 'full'} already exists and is not empty; choose another --out or "
                              "delete it", "export", "--checkpoint", pruned, "--out", tmp_path / "full")


def test_dynamo_failure_falls_back_to_torchscript(monkeypatch, capsys, tmp_path: Path, pruned: Path) -> None:
    export = torch.onnx.export

    def dynamo_fails(*args, dynamo: bool = True, **kwargs):
        if dynamo:
            raise RuntimeError("unsupported operator\nmore detail")
        return export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(pruned), "--out", str(tmp_path / "out"), "--json"]) == 0
    err = capsys.readouterr().err
    assert err == ("note: ONNX export (dynamo) failed: RuntimeError: unsupported operator; "
                   "trying the torchscript exporter\n")
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["onnx"]["exporter"] == "torchscript" and meta["onnx"]["check"]["passed"]
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind

"""``amc bench coverage``: one row per torchvision model, a failure is a row, never a crash."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from amc.cli import main

from helpers import in_process_error

# models the README's coverage table says amc prunes end to end; the slow test re-checks them all
END_TO_END = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5", "squeezenet1_0", "efficientnet_b0",
              "googlenet", "resnet50", "shufflenet_v2_x0_5", "regnet_x_400mf", "regnet_y_400mf", "resnext50_32x4d"]
HALF = ["shufflenet_v2_x0_5", "regnet_x_400mf", "regnet_y_400mf", "resnext50_32x4d"]  # grouped convs, channel shuffle


def test_a_model_that_works_and_one_that_does_not(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cov"
    assert main(["bench", "coverage", "--models", "mobilenet_v3_small", "convnext_tiny", "shufflenetv1", "--out", str(out),
                 "--threads", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["model"]: r for r in res["rows"]}
    good = rows["mobilenet_v3_small"]
    assert good["parity"] is True and good["onnx"] is True and good["error"] is None
    assert good["prunable_layers"] > 10 and 0 < good["min_flops_ratio"] < 0.5 and good["params"] > 1e6
    bad = rows["convnext_tiny"]  # its blocks are layer-normalised: nothing prunable
    assert bad["stage"] == "graph" and "the model has no prunable layer" in bad["error"] and bad["parity"] is None
    v1 = rows["shufflenetv1"]  # a zoo name: its bottlenecks prune through the channel shuffle
    assert v1["parity"] is True and v1["onnx"] is True and v1["prunable_layers"] == 16 and v1["min_flops_ratio"] < 0.5
    assert res["pruned_end_to_end"] == 2
    assert json.loads((out / "coverage.json").read_text())["rows"] == res["rows"]
    assert "| mobilenet_v3_small | 2.5 | 32 | " in (out / "coverage.md").read_text()


def test_bad_input(tmp_path: Path, capsys) -> None:
    in_process_error(capsys, "not a torchvision classification model or a zoo name: resnet9000", "bench", "coverage", "--models",
                     "resnet9000", "--out", str(tmp_path / "c"))
    in_process_error(capsys, "every model named is over --max-params 1M", "bench", "coverage", "--models",
                     "resnet18", "--max-params", "1", "--out", str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_every_torchvision_model_up_to_30m_parameters(tmp_path: Path, capsys) -> None:
    assert main(["bench", "coverage", "--max-params", "30", "--out", str(tmp_path / "cov"), "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]}
    for name in END_TO_END:
        assert rows[name]["parity"] and rows[name]["onnx"], rows[name]
    assert all(rows[name]["min_flops_ratio"] < 0.5 for name in HALF)
    assert all(r["error"] or (r["parity"] is not None) for r in rows.values())


def test_a_crash_or_a_hang_is_a_row(monkeypatch) -> None:
    """check_model runs in a child: a model that kills the interpreter is recorded, not fatal."""
    from amc import coverage

    rec = coverage.check_model_isolated("no_such_model_at_all", 32, timeout=60)
    assert rec["error"] and rec["stage"] == "build"  # an ordinary failure comes back from the child
    rec = coverage.check_model_isolated("resnet18", 32, timeout=0.01)
    assert rec["error"].startswith("no result within") or "crashed" in rec["error"]

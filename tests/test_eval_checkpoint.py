"""``amc eval --checkpoint``: the slim model and its base, measured side by side in one run."""
from __future__ import annotations

import itertools

import json
import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import amc
from amc.data import load_splits
from amc.latency import interleaved_latency
from amc.models import ModelSpec, build_model
from amc.train import evaluate

from helpers import TINY_NET, assert_one_error_line, in_process, pruned_checkpoint

MODEL = f"{TINY_NET}:factory"
JSON_KEYS = {"top1", "flops", "params", "file_bytes", "latency_ms_b1", "latency_ms_b64", "speedup_b1",
             "speedup_b64", "base_top1", "base_flops", "base_params", "base_file_bytes", "base_latency_ms_b1",
             "base_latency_ms_b64", "threads", "repeats", "warmup", "min_sample_ms", "copies"}


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("model.json", "model.safetensors"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_eval_checkpoint_json(run_amc, tiny_data_dir: Path, pruned: Path) -> None:
    proc = run_amc("eval", "--checkpoint", pruned, "--data-dir", tiny_data_dir, "--threads", "1",
                   "--repeats", "3", "--warmup", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    meta = json.loads((pruned / "model.json").read_text())
    assert JSON_KEYS <= set(res)
    assert res["threads"] == 1 and res["repeats"] == 3 and res["warmup"] == 1 and res["min_sample_ms"] == 5.0
    assert res["copies"] == 3
    assert res["flops"] == meta["flops"] and res["params"] == meta["params"]
    assert res["base_flops"] == meta["base"]["flops"] and res["base_params"] == meta["base"]["params"]
    assert res["file_bytes"] == (pruned / "model.safetensors").stat().st_size < res["base_file_bytes"]
    assert res["top1"] == meta["test_top1"]
    assert not res["base_weights_missing"] and res["base_weights"] == meta["base"]["weights"]
    splits = load_splits("fashion-mnist", str(tiny_data_dir), 0, 300)
    base = build_model(ModelSpec(MODEL, 1, 10))
    base.load_state_dict(torch.load(meta["base"]["weights"], weights_only=True))
    assert res["base_top1"] == evaluate(base, splits.test)
    for b in (1, 64):
        assert res[f"latency_ms_b{b}"] > 0 and res[f"base_latency_ms_b{b}"] > 0
        assert res[f"speedup_b{b}"] == pytest.approx(res[f"base_latency_ms_b{b}"] / res[f"latency_ms_b{b}"])


def test_eval_checkpoint_table(capsys, tiny_data_dir: Path, pruned: Path) -> None:
    proc = in_process(capsys, "eval", "--checkpoint", pruned, "--data-dir", tiny_data_dir, "--threads", "1",
                       "--repeats", "2", "--warmup", "0")
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines[2:8]] == ["test", "MACs", "params", "file", "latency", "latency"]
    assert lines[-1] == ("latency: CPU, torch, 1 thread, median of 2 runs after 0 warm-up runs, base and pruned "
                         "interleaved")


def test_eval_checkpoint_in_onnxruntime(capsys, tiny_data_dir: Path, pruned: Path) -> None:
    """--runtime ort times the slim model and its base in onnxruntime, with the same JSON keys."""
    proc = in_process(capsys, "eval", "--checkpoint", pruned, "--data-dir", tiny_data_dir, "--threads", "1",
                      "--repeats", "2", "--warmup", "1", "--runtime", "ort", "--batch-sizes", "1", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["runtime"] == "ort" and res["batch_sizes"] == [1, 8]
    for b in (1, 8):
        assert res[f"latency_ms_b{b}"] > 0 and res[f"speedup_b{b}"] == pytest.approx(
            res[f"base_latency_ms_b{b}"] / res[f"latency_ms_b{b}"])
    assert "latency_ms_b64" not in res


def test_missing_base_weights_are_named(capsys, tmp_path: Path, tiny_data_dir: Path, pruned: Path) -> None:
    ckpt = _copy(pruned, tmp_path / "ckpt")
    meta = json.loads((ckpt / "model.json").read_text())
    meta["base"]["weights"] = str(tmp_path / "gone.pt")
    (ckpt / "model.json").write_text(json.dumps(meta))
    proc = in_process(capsys, "eval", "--checkpoint", ckpt, "--data-dir", tiny_data_dir, "--repeats", "1",
                       "--warmup", "0", "--json")
    assert proc.returncode == 0
    assert proc.stderr == (f"note: the base weights {tmp_path / 'gone.pt'} are missing; the base model's top-1 is "
                           "not reported (its FLOPs, params and latency need only the architecture)\n")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["base_top1"] is None and res["base_weights_missing"] and res["speedup_b64"] > 0


def test_base_weights_that_would_run_code(capsys, tmp_path: Path, tiny_data_dir: Path, pruned: Path) -> None:
    marker = tmp_path / "marker"

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"0.weight": RunsCode()}, tmp_path / "evil.pt")
    ckpt = _copy(pruned, tmp_path / "ckpt")
    meta = json.loads((ckpt / "model.json").read_text())
    meta["base"]["weights"] = str(tmp_path / "evil.pt")
    (ckpt / "model.json").write_text(json.dumps(meta))
    assert_one_error_line(in_process(capsys, "eval", "--checkpoint", ckpt, "--data-dir", tiny_data_dir),
                          f"refusing to load {tmp_path / 'evil.pt'}: it holds pickled objects beyond plain "
                          "tensors (only state_dicts load, with weights_only=True)")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated weights", "pickled weights", "truncated json", "json list"])
def test_damaged_checkpoint(capsys, tmp_path: Path, tiny_data_dir: Path, pruned: Path, damage: str) -> None:
    ckpt = _copy(pruned, tmp_path / "ckpt")
    weights, meta = ckpt / "model.safetensors", ckpt / "model.json"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:-10])
    elif damage == "pickled weights":
        torch.save(amc.load_pruned(pruned).state_dict(), weights)
    elif damage == "truncated json":
        meta.write_text(meta.read_text()[:50])
    else:
        meta.write_text("[1, 2]")
    msg = assert_one_error_line(in_process(capsys, "eval", "--checkpoint", ckpt, "--data-dir", tiny_data_dir))
    expected = {"truncated weights": f"corrupt or truncated safetensors file {weights}: ",
                "pickled weights": f"corrupt or truncated safetensors file {weights}: ",
                "truncated json": f"corrupt JSON in {meta}: ",
                "json list": f"{meta} is not a JSON object"}[damage]
    assert msg.startswith(expected)


def test_bad_repeats(capsys, pruned: Path) -> None:
    assert_one_error_line(in_process(capsys, "eval", "--checkpoint", pruned, "--repeats", "0"),
                          "--repeats must be >= 1, got 0")
    assert_one_error_line(in_process(capsys, "eval", "--checkpoint", pruned, "--warmup", "-1"),
                          "--warmup must be >= 0, got -1")


# --------------------------------------------------------------------------- the latency module

class _Logged(nn.Module):
    def __init__(self, name: str, log: list[str], sleep_s: float = 0.0) -> None:
        super().__init__()
        self.name, self.log, self.sleep_s = name, log, sleep_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.name)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return x


def test_latency_runs_interleave_and_alternate() -> None:
    log: list[str] = []
    lat = interleaved_latency({"a": _Logged("a", log), "b": _Logged("b", log)}, (1, 4, 4), (1, 2),
                              repeats=3, warmup=1, min_sample_ms=0)
    # one call per sample; per batch size: 1 warm-up round + 3 timed rounds, each round running both, in alternating order
    assert log == ["a", "b", "b", "a", "a", "b", "b", "a"] * 2
    assert {n: sorted(lat[n]) for n in lat} == {"a": [1, 2], "b": [1, 2]}
    assert all(len(lat[n][b].samples_ms) == 3 for n in lat for b in lat[n])


def test_a_fast_model_runs_back_to_back_within_a_sample() -> None:
    log: list[str] = []
    lat = interleaved_latency({"fast": _Logged("fast", log), "slow": _Logged("slow", log, 0.004)}, (1, 4, 4), (1,),
                              repeats=2, warmup=0, min_sample_ms=3.0)
    runs = [(n, len(list(g))) for n, g in itertools.groupby(log)]
    # two calls each to size the samples, then per round one sample each, alternating the order:
    # the fast model's sample is many calls in a row (its steady state), the slow one's a single call
    assert runs[:2] == [("fast", 2), ("slow", 2)]
    assert [n for n, _ in runs[2:]] == ["fast", "slow", "fast"] and runs[3][1] == 1 + 1
    assert runs[2][1] == runs[4][1] > 10
    assert lat["slow"][1].median_ms >= 4 > lat["fast"][1].median_ms and len(lat["fast"][1].samples_ms) == 2


def test_latency_tells_a_slow_model_from_a_fast_one() -> None:
    log: list[str] = []
    lat = interleaved_latency({"slow": _Logged("slow", log, 0.01), "fast": _Logged("fast", log)}, (1, 4, 4), (1,),
                              repeats=3, warmup=0)
    assert lat["slow"][1].median_ms >= 10 > lat["fast"][1].median_ms


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir: Path) -> Path:
    return pruned_checkpoint(tmp_path_factory.mktemp("ckpt"), tiny_data_dir)


# --------------------------------------------------------------------------- several checkpoints, one base

def test_several_checkpoints_are_timed_against_one_base(capsys, tmp_path: Path, tiny_data_dir: Path,
                                                         pruned: Path) -> None:
    """Two checkpoints of one base: one run, one base timing shared by both, and the frontier picture."""
    other = _copy(pruned, tmp_path / "other")
    png = tmp_path / "frontier.png"
    proc = in_process(capsys, "eval", "--checkpoint", pruned, other, "--data-dir", tiny_data_dir, "--threads", "1",
                      "--repeats", "2", "--warmup", "0", "--batch-sizes", "1", "4", "--plot", png, "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["checkpoint"] for r in res["checkpoints"]] == [str(pruned), str(other)]
    assert res["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((pruned / "model.json").read_text())
    for r in res["checkpoints"]:
        assert JSON_KEYS - {"latency_ms_b64", "speedup_b64", "base_latency_ms_b64"} <= set(r)
        assert r["top1"] == meta["test_top1"] and r["flops"] == meta["flops"]
        for b in (1, 4):  # the base was timed once, in the same run as both
            assert r[f"base_latency_ms_b{b}"] == res[f"base_latency_ms_b{b}"]
            assert r[f"speedup_b{b}"] == pytest.approx(res[f"base_latency_ms_b{b}"] / r[f"latency_ms_b{b}"])
    table = in_process(capsys, "eval", "--checkpoint", pruned, other, "--data-dir", tiny_data_dir, "--threads", "1",
                       "--repeats", "1", "--warmup", "0", "--batch-sizes", "1").stdout.splitlines()
    assert table[0].startswith("base ") and table[1].split() == ["checkpoint", "test", "top-1", "MACs", "params",
                                                                 "speedup", "b1"]
    assert [line.split()[0] for line in table[2:4]] == [str(pruned), str(other)]
    assert table[-1].endswith("the base and all 2 checkpoints interleaved")


def test_checkpoints_of_different_bases_are_refused(capsys, tmp_path: Path, tiny_data_dir: Path,
                                                    pruned: Path) -> None:
    other = _copy(pruned, tmp_path / "other")
    meta = json.loads((other / "model.json").read_text())
    meta["base"]["weights"] = str(tmp_path / "another-base.pt")
    (other / "model.json").write_text(json.dumps(meta))
    assert_one_error_line(in_process(capsys, "eval", "--checkpoint", pruned, other, "--data-dir", tiny_data_dir),
                          f"{other} was pruned from another base model than {pruned} (model, input shape or base "
                          "weights differ): amc eval times several checkpoints against one base")
    assert_one_error_line(in_process(capsys, "eval", "--checkpoint", pruned, pruned), "a checkpoint is named twice")


def test_plot_needs_checkpoints(capsys, tmp_path: Path) -> None:
    assert_one_error_line(in_process(capsys, "eval", "--model", MODEL, "--plot", tmp_path / "p.png"),
                          "--plot draws checkpoints against their base: give --checkpoint")
    assert_one_error_line(in_process(capsys, "eval", "--checkpoint", "x", "--plot", tmp_path),
                          f"--plot {tmp_path} is a folder; give a .png file")


def test_dominated_points_are_those_beaten_on_both_axes() -> None:
    from amc.frontier import dominated

    # (speedup, top-1): b beats a on both; c is faster than b but less accurate; d ties b exactly
    assert dominated([(1.2, 92.0), (1.5, 92.5), (2.0, 91.0), (1.5, 92.5)]) == [True, False, False, False]


def test_the_python_api_behind_the_command(tiny_data_dir: Path, pruned: Path) -> None:
    from amc.errors import AmcError
    from amc.slim_eval import evaluate_checkpoints

    rows, note = evaluate_checkpoints([pruned], batch_sizes=[1], repeats=1, warmup=0, data_dir=str(tiny_data_dir))
    meta = json.loads((pruned / "model.json").read_text())
    assert note is None and [r["checkpoint"] for r in rows] == [str(pruned)]
    assert rows[0]["top1"] == meta["test_top1"] and rows[0]["batch_sizes"] == [1] and rows[0]["speedup_b1"] > 0
    with pytest.raises(AmcError, match="no checkpoint given"):
        evaluate_checkpoints([])


def test_fine_tunes_of_one_architecture_are_one_point_with_one_label(tmp_path: Path) -> None:
    from amc.frontier import frontier_png, group_by_architecture, group_label

    def row(name: str, flops: int, top1: float, speedup: float) -> dict:
        return {"checkpoint": f"runs/x/{name}", "flops": flops, "params": flops // 10, "top1": top1,
                "speedup_b64": speedup, "batch_sizes": [64], "base_top1": 93.1, "model": "plain20"}

    rows = [row("latency-0.6-ft0", 400, 93.0, 1.60), row("uniform-0.61-ft0", 390, 93.1, 1.62),
            row("latency-0.6-ft1", 400, 93.2, 1.66), row("flops-0.5", 500, 93.0, 1.45)]
    groups = group_by_architecture(rows)
    assert [[r["checkpoint"].split("/")[-1] for r in g] for g in groups] == [
        ["latency-0.6-ft0", "latency-0.6-ft1"], ["uniform-0.61-ft0"], ["flops-0.5"]]
    assert [group_label(g) for g in groups] == ["latency-0.6 (x2)", "uniform-0.61-ft0", "flops-0.5"]
    assert group_label([row("a1", 1, 0, 1), row("b1", 1, 0, 1)]) == "a1 (x2)"  # no common prefix: the first name
    # equal MACs and params are not one architecture if the kept channels differ, or if one is int8
    twins = [{**row("p-a", 400, 93.0, 1.6), "kept": [8, 16]}, {**row("p-b", 400, 93.0, 1.6), "kept": [16, 8]},
             {**row("p-a-ft1", 400, 93.1, 1.6), "kept": [8, 16]},
             {**row("p-a-int8", 400, 93.0, 2.4), "kept": [8, 16], "kind": "quantized"}]
    assert [len(g) for g in group_by_architecture(twins)] == [2, 1, 1]
    png = tmp_path / "f.png"
    frontier_png(rows, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_labels_stay_inside_and_do_not_sit_on_each_other() -> None:
    from amc.frontier import label_placements

    # two points at the right edge, almost level: both labels grow leftwards, the lower one goes under its point
    pts = [(1.0, 93.0), (1.85, 92.0), (1.86, 92.02), (1.3, 92.8)]
    places = label_placements(pts, [4, 18, 18, 12])
    assert places[0] == (4, 3, "left") and places[3] == (4, 3, "left")
    assert places[2] == (-4, 3, "right") and places[1] == (-4, -10, "right")
    # level but far apart sideways: no clash
    assert [dy for _, dy, _ in label_placements([(1.0, 92.0), (1.5, 92.0), (2.0, 93.0)], [6, 6, 6])] == [3, 3, 3]

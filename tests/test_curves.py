"""amc bench curves: learning curves read from run folders, exact statistics, one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import in_process, in_process_error


def _run(folder: Path, top1: list[float], algo: str = "ddpg", warmup: int = 2, torn: bool = False) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"config": {"algo": algo, "warmup": warmup}}))
    lines = [json.dumps({"episode": i, "reward_top1": t}) for i, t in enumerate(top1)]
    (folder / "episodes.jsonl").write_text("\n".join(lines) + ("\n{\"episode\": 9" if torn else "\n"))
    return folder


def test_curves_of_a_benchmark_folder_and_a_run(capsys, tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    _run(bench / "ddpg-seed0", [50, 80, 70, 90, 60])
    _run(bench / "ddpg-seed1", [85, 60, 60, 61, 62, 99], torn=True)  # one more episode: cut to 5
    _run(bench / "random-seed0", [40, 41, 42, 43, 44], algo="random")
    (bench / "summary.json").write_text("{}")  # not a run folder: ignored
    single = _run(tmp_path / "one", [10, 20, 30])
    out = tmp_path / "c.png"
    proc = in_process(capsys, "bench", "curves", bench, single, "--labels", "B", "S", "--window", "2",
                      "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    curves = json.loads(proc.stdout.strip().splitlines()[-1])["curves"]
    assert set(curves) == {"B/ddpg", "B/random", "S"}
    d = curves["B/ddpg"]
    assert d["seeds"] == 2 and d["episodes"] == 5 and d["warmup"] == 2
    assert d["best_episode"] == [3, 0] and d["best_in_warmup"] == 1   # seed 1's best came in the warm-up
    assert d["final_best_mean"] == pytest.approx((90 + 85) / 2)
    assert d["last_100_mean"] == pytest.approx(np.mean([50, 80, 70, 90, 60, 85, 60, 60, 61, 62]))
    assert curves["B/random"]["warmup"] == 0 and curves["S"]["final_best_mean"] == 30
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_moving_average_is_exact() -> None:
    from agents.curves import _moving_average

    assert _moving_average(np.array([1.0, 3.0, 5.0, 7.0]), 2).tolist() == [1.0, 2.0, 4.0, 6.0]


def test_bad_input_is_one_line(capsys, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    in_process_error(capsys, f"{tmp_path / 'empty'} is neither a search run folder (episodes.jsonl) nor a "
                     "benchmark folder ({algo}-seed{N} run folders)", "bench", "curves", tmp_path / "empty",
                     "--out", tmp_path / "c.png")
    _run(tmp_path / "r", [1.0])
    in_process_error(capsys, "--labels needs one label per folder: 1 folders, 2 labels", "bench", "curves",
                     tmp_path / "r", "--labels", "a", "b", "--out", tmp_path / "c.png")
    in_process_error(capsys, f"--out must name a .png file, got {tmp_path / 'c.txt'}", "bench", "curves", tmp_path / "r",
                     "--out", tmp_path / "c.txt")
    _run(tmp_path / "fresh", [])
    in_process_error(capsys, "fresh has no finished episode yet", "bench", "curves", tmp_path / "fresh",
                     "--out", tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()

"""``amc bench compare`` and :mod:`amc.finetune_stats`: groups of fine-tunes, their means and differences."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from amc.errors import AmcError
from amc.finetune_stats import bootstrap_interval, compare_groups
from tests.helpers import in_process, in_process_error


def fake_finetune(root: Path, name: str, test: float, reward: float, seed: int | None = None,
                  flops: int = 1000, params: int = 100, kept: tuple[int, ...] = (8, 16)) -> Path:
    d = root / name
    d.mkdir()
    meta = {"kind": "finetuned", "test_top1": test, "reward_top1": reward, "flops": flops, "params": params,
            "channels": [{"layer": f"conv{i}", "kept": k} for i, k in enumerate(kept)]}
    if seed is not None:
        meta["finetune"] = {"config": {"seed": seed}}
    (d / "model.json").write_text(json.dumps(meta))
    return d


def test_constant_groups_have_a_point_interval_at_the_difference() -> None:
    assert bootstrap_interval([2.0, 2.0, 2.0], [1.5, 1.5]) == pytest.approx((0.5, 0.5))


def test_interval_is_seeded_and_brackets_the_difference_of_means() -> None:
    a, b = [92.3, 92.25, 92.43, 92.27], [91.9, 92.1, 91.74, 92.0]
    lo, hi = bootstrap_interval(a, b, seed=3)
    assert (lo, hi) == bootstrap_interval(a, b, seed=3)
    assert lo < np.mean(a) - np.mean(b) < hi
    # the extremes of any resample bound it: every a-value minus every b-value
    assert min(a) - max(b) <= lo and hi <= max(a) - min(b)


def test_compare_groups_means_pairs_and_flags(tmp_path: Path) -> None:
    a = [fake_finetune(tmp_path, f"lat-fs{s}", 92.0 + 0.1 * s, 92.5, seed=s) for s in range(3)]
    b = [fake_finetune(tmp_path, f"uni-fs{s}", 92.05, 92.6 - 0.1 * s, seed=s, flops=900 + s) for s in (0, 2, 5)]
    res = compare_groups([a, b], ["lat", "uni"])
    ga, gb = res["groups"]
    assert ga["test"]["mean"] == pytest.approx(92.1) and ga["test"]["std"] == pytest.approx(0.1)
    assert not ga["mixed"] and gb["mixed"]  # b's folders hold three architectures
    # equal MACs and params, other channels kept: two architectures too
    c = [fake_finetune(tmp_path, f"c-fs{s}", 92.0, 92.0, kept=k) for s, k in enumerate([(8, 16), (16, 8)])]
    assert compare_groups([a, c], ["lat", "c"])["groups"][1]["mixed"]
    d = res["differences"][0]
    assert d["test"]["mean"] == pytest.approx(0.05) and d["reward"]["mean"] == pytest.approx(0.5 - 0.6 + 0.7 / 3)
    # seeds 0 and 2 are in both groups: 92.0 - 92.05 and 92.2 - 92.05
    assert [(p["seed"], round(p["test"], 6)) for p in d["pairs"]] == [(0, -0.05), (2, 0.15)]
    assert d["ahead_test"] == 1


def test_one_finetune_gives_no_interval_and_no_std(tmp_path: Path) -> None:
    a = [fake_finetune(tmp_path, "a", 92.0, 92.0)]
    b = [fake_finetune(tmp_path, f"b{s}", 91.0 + s, 91.0) for s in range(2)]
    res = compare_groups([a, b], ["a", "b"])
    assert res["groups"][0]["test"]["std"] is None
    assert res["differences"][0]["test"]["interval"] is None
    assert res["differences"][0]["pairs"] == []  # no fine-tune seeds recorded


def test_bad_groups_are_user_errors(tmp_path: Path) -> None:
    a = fake_finetune(tmp_path, "a", 92.0, 92.0)
    with pytest.raises(AmcError, match="at least two groups"):
        compare_groups([[a]], ["a"])
    with pytest.raises(AmcError, match="2 names for 3 groups"):
        compare_groups([[a], [a], [a]], ["x", "y"])
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.json").write_text(json.dumps({"kind": "base"}))
    with pytest.raises(AmcError, match="no test_top1 or reward_top1"):
        compare_groups([[a], [bare]], ["a", "bare"])


def test_cli_table_json_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = [fake_finetune(tmp_path, f"ft-lat-fs{s}", 92.3, 92.2, seed=s) for s in range(3)]
    b = [fake_finetune(tmp_path, f"ft-uni-fs{s}", 92.0, 92.3, seed=s) for s in range(3)]
    proc = in_process(capsys, "bench", "compare", "--group", *a, "--group", *b)
    assert proc.returncode == 0, proc.stderr
    assert "ft-lat (x3) - ft-uni (x3): test +0.30 [+0.30, +0.30], reward -0.10 [-0.10, -0.10]" in proc.stdout
    assert "ahead on test in 3 of 3 seed pairs" in proc.stdout
    proc = in_process(capsys, "bench", "compare", "--group", *a, "--group", *b, "--labels", "AMC", "uniform", "--json")
    res = json.loads(proc.stdout.splitlines()[-1])
    assert [g["label"] for g in res["groups"]] == ["AMC", "uniform"]
    assert res["differences"][0]["test"]["interval"] == pytest.approx([0.3, 0.3])
    log = tmp_path / "ft-lat-fs0.log"
    log.write_text("a log, caught by a glob")
    in_process_error(capsys, f"{log} is not a checkpoint folder (amc prune, finetune or export writes one)",
                     "bench", "compare", "--group", log, "--group", *b)
    in_process_error(capsys, "--labels gives 1 names for 2 groups",
                     "bench", "compare", "--group", *a, "--group", *b, "--labels", "one")

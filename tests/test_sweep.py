"""``amc sweep``: searches as Ray tasks, summarised as ``amc bench quality`` summarises them."""
from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

from amc.cli import main

from helpers import in_process_error
from test_search_cli import setup  # noqa: F401  (the tiny model, data and weights fixture)


def _sweep_args(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:  # noqa: F811
    return ["sweep", "--models", f"{setup['model']}:factory", "--weights", str(setup["weights"]),
            "--data-dir", str(setup["data"]), "--reward-set-size", "200", "--calib-batches", "2",
            "--calib-batch-size", "20", "--seeds", "0", "--algos", "random", "ddpg", "--episodes", "3",
            "--warmup", "2", "--out", str(out), *extra]


@pytest.fixture
def local_ray():
    """One local Ray for the whole test (its start-up is most of the test's time); amc sweep
    uses a Ray that is already running and leaves it running."""
    ray = pytest.importorskip("ray", reason="Ray is the optional extra amc[scale]")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def test_two_trials_on_a_local_ray_then_resume_only_reports(setup, tmp_path, capsys, local_ray):  # noqa: F811
    out = tmp_path / "sweep"
    assert main(_sweep_args(setup, out, "--json")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["trials"] == 2 and len(summary["groups"]) == 1
    group = summary["groups"][0]
    folder = out / group["group"]
    assert group["group"] == "tiny-factory-t0.5" and group["algos"] == ["random", "ddpg"]
    assert group["warmup"] == 2 and group["episodes"] == 3  # DDPG's warm-up, not random search's 0
    for algo in ("random", "ddpg"):
        run = folder / f"{algo}-seed0"
        assert len((run / "episodes.jsonl").read_text().splitlines()) == 3
        assert json.loads((run / "config.json").read_text())["algo"] == algo
        (row,) = group["runs"][algo]
        assert row["flops_ratio"] <= 0.5 and 0 <= row["test_top1"] <= 100
    # the group folder holds what amc bench quality writes, so both read alike
    assert json.loads((folder / "summary.json").read_text())["mean"] == group["mean"]
    assert json.loads((out / "summary.json").read_text())["groups"][0]["mean"] == group["mean"]

    # --resume: finished trials are only reported; the evaluations come from the cache
    assert main(_sweep_args(setup, out, "--resume", "--json")) == 0
    assert local_ray.is_initialized()  # not shut down by amc sweep: it did not start it
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["groups"][0]["mean"] == group["mean"]
    assert len((folder / "ddpg-seed0" / "episodes.jsonl").read_text().splitlines()) == 3

    # --resume with other settings: refused before any trial runs, nothing rewritten
    before = (folder / "summary.json").read_text()
    in_process_error(capsys, f"{folder / 'random-seed0'} holds a search with other settings than this command's "
                     "(lbound 0.2 there, 0.3 here); give the settings it was run with, or another --out",
                     *_sweep_args(setup, out, "--lbound", "0.3", "--resume"))
    assert (folder / "summary.json").read_text() == before


def test_without_ray_it_says_how_to_install_it(setup, tmp_path, capsys, monkeypatch):  # noqa: F811
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    in_process_error(capsys, "amc sweep needs Ray: pip install 'amc[scale]' (or pip install 'ray>=2.9')",
                     *_sweep_args(setup, tmp_path / "s"))
    assert not (tmp_path / "s").exists()
    in_process_error(capsys, "--cpus sizes a local Ray; a cluster given by --address has its own",
                     *_sweep_args(setup, tmp_path / "s", "--cpus", "2", "--address", "auto"))
    in_process_error(capsys, "--gpus-per-trial needs --device cuda (or auto)",
                     *_sweep_args(setup, tmp_path / "s", "--gpus-per-trial", "0.5"))

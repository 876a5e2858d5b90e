"""Fault injection: a search killed with SIGKILL (or Ctrl-C) at random moments loses nothing.

Under ``make test-slow`` (``pytest -m slow tests/test_fault_injection.py -s`` prints the tally).

- ``test_twenty_random_kills``: one DDPG search of the tiny test model, started and killed
  (SIGKILL) at a random moment 20 times: during Python's imports, the set-up, an episode, a
  save. After each kill the next start is ``amc search --resume RUN`` (or ``--run RUN`` when
  the kill came before ``config.json`` existed). After every kill, ``episodes.jsonl`` holds
  episodes 0, 1, 2, ... each once (a torn last line aside) and ``best_policy.json`` parses;
  at the end the run equals an uninterrupted one of the same seed, row for row.
- ``test_ctrl_c_at_random_moments_is_one_line_and_resumable``: SIGINT at random moments, imports
  included: one line, exit 130, and the run continues exactly.
- ``test_dropping_a_restore_makes_the_resume_differ``: the mutation check behind the README:
  a resume that skips restoring numpy's generator, torch's generator or the exploration
  noise gives another search, so the exact-resume tests would catch it.
"""
from __future__ import annotations

import json
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from amc.cli import main
from helpers import in_process
from test_search_cli import popen_amc, read_episodes, search_args, setup  # noqa: F401  (setup is a fixture)

KILLS = 20
EPISODES, WARMUP, SEED = 120, 5, 11


def rows(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_episodes(run)]


def check_after_kill(run: Path) -> int:
    """The invariants a kill must never break; returns the episodes on disk."""
    jsonl = run / "episodes.jsonl"
    if not jsonl.exists():
        return 0
    lines = jsonl.read_text().split("\n")
    complete = [json.loads(line) for line in lines[:-1]]  # the last piece may be a torn line
    assert [r["episode"] for r in complete] == list(range(len(complete))), "an episode lost or duplicated"
    if (run / "best_policy.json").exists():
        best = json.loads((run / "best_policy.json").read_text())  # always whole: written atomically
        assert isinstance(best["episode"], int) and len(best["layers"]) == 3
    return len(complete)


@pytest.mark.slow
def test_twenty_random_kills(setup, tmp_path) -> None:
    opts = ("--algo", "ddpg", "--episodes", str(EPISODES), "--warmup", str(WARMUP), "--seed", str(SEED), "--quiet")
    reference = tmp_path / "reference"
    t0 = time.monotonic()
    proc = popen_amc(search_args(setup, reference, *opts), tmp_path)
    while not (reference / "episodes.jsonl").exists():  # how long a start takes, imports and set-up
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.01)
    startup = time.monotonic() - t0
    assert proc.wait(timeout=600) == 0, proc.communicate()[1]
    per_episode = (time.monotonic() - t0 - startup) / EPISODES

    run = tmp_path / "run"
    rng = random.Random(2026)
    phases = {"before config.json": 0, "in the set-up": 0, "during episodes": 0}
    kills = 0
    while kills < KILLS:
        resume = (run / "config.json").is_file()
        args = ["search", "--resume", str(run), "--quiet"] if resume else search_args(setup, run, *opts)
        before = check_after_kill(run)
        proc = popen_amc(args, tmp_path)
        spawned = time.monotonic()
        if rng.random() < 0.4:
            # anywhere in the start-up: Python's imports, reading the run, the data, the calibration
            deadline = spawned + rng.uniform(0, startup)
        else:
            # once episodes run again: a random moment of the next few (in one, or in a save)
            while check_after_kill(run) <= before and proc.poll() is None:
                time.sleep(0.002)
            left = EPISODES - before
            deadline = time.monotonic() + rng.uniform(0, per_episode * max(1.0, 0.5 * left / (KILLS - kills + 1)))
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.002)
        assert proc.poll() is None, f"the search ended before its kill: {proc.communicate()[1]}"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        kills += 1
        after = check_after_kill(run)
        phase = ("before config.json" if not (run / "config.json").exists() else
                 "in the set-up" if after == before else "during episodes")
        phases[phase] += 1

    res = in_process_resume(run)
    assert res["episodes"] == EPISODES
    assert rows(run) == rows(reference)  # nothing lost, nothing twice, the same search
    best = json.loads((run / "best_policy.json").read_text())
    assert best == json.loads((reference / "best_policy.json").read_text())
    lost = EPISODES - len({r["episode"] for r in read_episodes(run)})
    print(f"\n{kills} of {KILLS} kills survived, {lost} episodes lost "
          f"({', '.join(f'{n} {p}' for p, n in phases.items())}; {EPISODES} episodes, start-up {startup:.1f} s)")
    assert lost == 0


def in_process_resume(run: Path) -> dict:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["search", "--resume", str(run), "--quiet", "--json"])
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue().strip().splitlines()[-1])


# --------------------------------------------------------------------------- mutations of the restore

def _skip_numpy(state, env, agent=None):
    import numpy

    saved = dict(state)
    numpy_state = numpy.random.get_state(legacy=False)
    saved["numpy"] = {**numpy_state, "state": {**numpy_state["state"], "key": numpy_state["state"]["key"].tolist()}}
    return _REAL_RESTORE(saved, env, agent)


def _skip_torch(state, env, agent=None):
    import torch

    return _REAL_RESTORE({**state, "torch": torch.get_rng_state()}, env, agent)


def _skip_noise(agent, state):
    return _REAL_LOAD(agent, {**state, "noise": None})


_REAL_RESTORE = _REAL_LOAD = None


@pytest.mark.slow
@pytest.mark.parametrize("algo,mutation", [("ddpg", "numpy"), ("ddpg", "noise"), ("sac", "torch")])
def test_dropping_a_restore_makes_the_resume_differ(setup, tmp_path, capsys, monkeypatch, algo, mutation) -> None:
    global _REAL_RESTORE, _REAL_LOAD
    import agents.callbacks
    import agents.resume

    opts = ("--algo", algo, "--episodes", "16", "--warmup", "2", "--seed", "7", "--quiet")
    reference = tmp_path / "reference"
    assert main(search_args(setup, reference, *opts)) == 0
    run = tmp_path / "run"
    real = agents.callbacks.EpisodeLog.on_episode

    def killed_in_the_seventh(self, info):
        if self.episodes == 6:
            raise KeyboardInterrupt  # as SIGKILL there: six episodes saved, the seventh never logged
        return real(self, info)

    monkeypatch.setattr(agents.callbacks.EpisodeLog, "on_episode", killed_in_the_seventh)
    assert main(search_args(setup, run, *opts)) == 130
    monkeypatch.undo()
    mutated = tmp_path / "mutated"
    shutil.copytree(run, mutated)

    assert in_process(capsys, "search", "--resume", run, "--quiet").returncode == 0
    assert rows(run) == rows(reference)  # the real restore: exact

    _REAL_RESTORE, _REAL_LOAD = agents.resume.restore_rng_state, agents.resume.load_agent_state
    if mutation == "noise":
        monkeypatch.setattr(agents.resume, "load_agent_state", _skip_noise)
    else:
        monkeypatch.setattr(agents.resume, "restore_rng_state", _skip_numpy if mutation == "numpy" else _skip_torch)
    assert in_process(capsys, "search", "--resume", mutated, "--quiet").returncode == 0
    assert rows(mutated)[:6] == rows(reference)[:6]
    assert rows(mutated) != rows(reference), f"dropping the {mutation} restore went unnoticed"


@pytest.mark.slow
def test_ctrl_c_at_random_moments_is_one_line_and_resumable(setup, tmp_path) -> None:
    """SIGINT, 12 times, at random moments of start-up, set-up and episodes: exit 130 (or 0 when the
    search had just finished) with one line on stderr and no traceback, and the run goes on."""
    opts = ("--algo", "ddpg", "--episodes", "40", "--warmup", "3", "--seed", "5", "--quiet")
    reference = tmp_path / "reference"
    assert main(search_args(setup, reference, *opts)) == 0
    run = tmp_path / "run"
    rng = random.Random(7)
    outcomes = []
    for _ in range(12):
        args = ["search", "--resume", str(run), "--quiet"] if (run / "config.json").is_file() \
            else search_args(setup, run, *opts)
        proc = popen_amc(args, tmp_path)
        time.sleep(rng.uniform(0.2, 6.0))  # Python installs its SIGINT handler in its first moments
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        lines = err.splitlines()
        assert "Traceback" not in err, err
        if proc.returncode == 0:  # finished before the signal came
            break
        assert proc.returncode == 130 and len(lines) == 1, (proc.returncode, err)
        assert lines[0] == "error: interrupted" or lines[0].startswith("stopped by SIGINT"), err
        outcomes.append("while starting" if lines[0] == "error: interrupted" else
                        "in the set-up" if "before the first episode" in lines[0] else "between episodes")
        check_after_kill(run)
    res = in_process_resume(run)
    assert res["episodes"] == 40 and rows(run) == rows(reference)
    print(f"\n{len(outcomes)} interrupts, each one line and exit 130 "
          f"({', '.join(f'{outcomes.count(k)} {k}' for k in sorted(set(outcomes)))}); the resumed run is exact")


@pytest.mark.slow
@pytest.mark.parametrize("to", ["group", "parent"])
def test_ctrl_c_stops_a_parallel_bench_and_it_resumes(setup, tmp_path, to) -> None:
    """``bench quality --jobs 2``: SIGINT to the whole process group (a terminal's Ctrl-C) or to the
    parent alone: one line, exit 130, the workers' searches saved; ``--resume`` finishes the job."""
    import os
    import subprocess
    import sys

    from helpers import SUBPROCESS_ENV

    out = tmp_path / "q"
    bench = ["bench", "quality", "--model", f"{setup['model']}:factory", "--weights", str(setup["weights"]),
             "--data-dir", str(setup["data"]), "--reward-set-size", "200", "--calib-batches", "2",
             "--calib-batch-size", "20", "--seeds", "0", "1", "2", "--algos", "random", "--episodes", "300",
             "--jobs", "2", "--threads", "1", "--json", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "amc", *bench], cwd=tmp_path, env=SUBPROCESS_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    while not any(p.is_file() and p.read_text().count("\n") >= 3 for p in out.glob("*/episodes.jsonl")):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    if to == "group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert err.splitlines()[-1] == (f"stopped by SIGINT; finished searches and the saved states of stopped ones are "
                                    f"in {out}; continue with the same command and --resume")
    assert not (out / "summary.json").exists()
    assert not (out / "random-seed2").exists()  # queued, never started
    saved = {p.parent.name for p in out.glob("*/state.pt")}  # one of the two may have been stopped in its set-up
    assert saved and saved <= {"random-seed0", "random-seed1"}, saved
    res = subprocess.run([sys.executable, "-m", "amc", *bench, "--resume"], cwd=tmp_path, env=SUBPROCESS_ENV,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["seed"] for r in summary["runs"]["random"]] == [0, 1, 2]
    for seed in (0, 1, 2):
        assert [r["episode"] for r in read_episodes(out / f"random-seed{seed}")] == list(range(300))

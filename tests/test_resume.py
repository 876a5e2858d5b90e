"""A search stopped at any moment resumes as if it had never stopped.

The core test kills a search subprocess with SIGKILL in the middle of its run, resumes it,
and compares it with an uninterrupted search of the same seed: the same episodes, reward for
reward and ratio for ratio, the same best policy, and TensorBoard curves with every episode
exactly once. That needs every random state, the agent, its optimizers, the replay buffer and
the noise restored bit for bit.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from amc.cli import main
from helpers import assert_one_error_line
from test_search_cli import popen_amc, read_episodes, search_args, setup  # noqa: F401  (setup is a fixture)

EPISODES, WARMUP = 16, 2


def curve(run: Path) -> list[dict]:
    """episodes.jsonl without the wall-clock column."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_episodes(run)]


def best_policy(run: Path) -> dict:
    return json.loads((run / "best_policy.json").read_text())


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0}).Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def in_process(*args: str, capsys) -> subprocess.CompletedProcess:
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = int(e.code)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


def stop_after(proc: subprocess.Popen, run: Path, lines: int, how: int) -> None:
    """Send ``how`` to the search once ``episodes.jsonl`` has ``lines`` lines."""
    jsonl = run / "episodes.jsonl"
    deadline = time.monotonic() + 120
    while not (jsonl.exists() and jsonl.read_text().count("\n") >= lines):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert proc.poll() is None, "the search finished before it could be stopped"
    proc.send_signal(how)


def saved_episodes(run: Path) -> int:
    return torch.load(run / "state.pt", weights_only=True)["log"]["episodes"]


@pytest.mark.parametrize("algo,save_every", [("ddpg", 1), ("sac", 3), pytest.param("td3", 2, marks=pytest.mark.slow)])
def test_kill_9_then_resume_equals_an_uninterrupted_search(setup, tmp_path, capsys, algo, save_every):
    opts = ("--algo", algo, "--episodes", str(EPISODES), "--warmup", str(WARMUP), "--seed", "7", "--quiet")
    killed = tmp_path / "killed"
    proc = popen_amc(search_args(setup, killed, *opts, "--save-every", str(save_every)), tmp_path)
    reference = tmp_path / "reference"  # runs here while the subprocess starts up
    assert main(search_args(setup, reference, *opts)) == 0
    stop_after(proc, killed, 4, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    logged, saved = len(read_episodes(killed)) if (killed / "episodes.jsonl").exists() else 0, saved_episodes(killed)
    assert WARMUP <= saved <= logged < EPISODES
    if save_every > 1:  # episodes logged after the last save: cut back on resume, then run again
        assert saved % save_every == 0 and logged > saved

    res = in_process("search", "--resume", killed, "--json", capsys=capsys)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["resumed_at_episode"] == saved and result["episodes"] == EPISODES

    assert curve(killed) == curve(reference)  # bit for bit: every reward, ratio and kept count
    ref_best, best = best_policy(reference), best_policy(killed)
    assert best == ref_best
    assert result["best_reward"] == ref_best["reward"] and result["best_episode"] == ref_best["episode"]
    assert (killed / "best_policy.png").is_file()

    # two events files (one per process); TensorBoard shows each episode once, the same values
    assert len(list((killed / "tb").glob("events.out.tfevents.*"))) == 2
    ref_tb, tb = scalars(reference), scalars(killed)
    assert sorted(tb) == sorted(ref_tb)
    for tag, points in ref_tb.items():
        assert tb[tag] == points, tag
    assert [step for step, _ in tb["episode/reward"]] == list(range(EPISODES))


@pytest.mark.parametrize("how,code,algo", [(signal.SIGINT, 130, "random"), (signal.SIGTERM, 143, "ddpg")],
                         ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_save_and_say_how_to_resume(setup, tmp_path, capsys, how, code, algo):
    opts = ("--algo", algo, "--episodes", "12", "--warmup", "2", "--seed", "3", "--quiet")
    run = tmp_path / "run"
    # saving every 5 episodes: the clean stop still saves the latest finished episode
    proc = popen_amc(search_args(setup, run, *opts, "--save-every", "5"), tmp_path)
    reference = tmp_path / "reference"
    assert main(search_args(setup, reference, *opts)) == 0
    stop_after(proc, run, 3, how)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    n = saved_episodes(run)
    name = "SIGINT" if how == signal.SIGINT else "SIGTERM"
    assert err.splitlines() == [f"stopped by {name} after {n} of 12 episodes (the search state is saved in {run}); "
                                f"resume with: amc search --resume {run}"]  # one line
    assert "Traceback" not in err and out == ""
    assert len(read_episodes(run)) == n >= 3  # the files agree with the state
    assert best_policy(run)["episode"] < n

    assert main(["search", "--resume", str(run), "--quiet"]) == 0
    assert curve(run) == curve(reference)
    assert best_policy(run) == best_policy(reference)


def test_resuming_a_finished_search_reports_it(setup, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(search_args(setup, run, "--algo", "random", "--episodes", "3", "--quiet", "--json")) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    res = in_process("search", "--resume", run, "--json", capsys=capsys)
    assert res.returncode == 0
    assert res.stderr == f"note: the search in {run} has finished all its 3 episodes; nothing to resume\n"
    again = json.loads(res.stdout.strip().splitlines()[-1])
    assert again["resumed_at_episode"] == 3
    for key in ("best_reward", "best_episode", "best_ratios", "episodes", "base_reward_top1"):
        assert again[key] == first[key], key
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # nothing rewritten


def test_resume_refuses_what_it_cannot_continue(setup, tmp_path, capsys):
    def error(*args: str) -> str:
        return assert_one_error_line(in_process(*args, capsys=capsys))

    run = tmp_path / "run"
    assert main(search_args(setup, run, "--algo", "random", "--episodes", "2", "--quiet")) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error("search", "--resume", empty) == f"{empty} has no config.json; --resume takes a run folder of amc search"
    assert error("search", "--resume", tmp_path / "nope") == f"run folder not found: {tmp_path / 'nope'}"
    assert error("search", "--resume", run, "--episodes", "9", "--seed", "1") == (
        "--resume takes its settings from RUN/config.json; drop --episodes, --seed")
    assert error("search", "--resume", run, "--run", run) == (
        "argument --run: not allowed with argument --resume (see: amc search --help)")
    assert error(*search_args(setup, run, "--quiet")) == (
        f"run folder {run} holds a search already; continue it with: amc search --resume {run} "
        "(or choose another --run)")

    config_only = tmp_path / "config_only"  # episodes logged, but no state: nothing to go on from
    config_only.mkdir()
    (config_only / "config.json").write_text((run / "config.json").read_text())
    (config_only / "episodes.jsonl").write_text((run / "episodes.jsonl").read_text())
    assert error("search", "--resume", config_only) == (
        f"{config_only} holds no saved search state (state.pt); only a run folder of amc search that finished "
        "at least its set-up can be resumed (delete it and start again)")

    state = (run / "state.pt").read_bytes()
    (run / "state.pt").write_bytes(state[: len(state) // 2])
    assert error("search", "--resume", run).startswith(f"corrupt search state {run / 'state.pt'}: ")

    marker = tmp_path / "marker"

    class RunsCode:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    torch.save({"format": 1, "log": RunsCode()}, run / "state.pt")
    assert error("search", "--resume", run).startswith(f"corrupt search state {run / 'state.pt'}: ")
    assert not marker.exists()  # loaded with weights_only=True: nothing runs

    (run / "state.pt").write_bytes(state)
    config = json.loads((run / "config.json").read_text())
    config["config"]["episodes"] = 5
    (run / "config.json").write_text(json.dumps(config))
    assert error("search", "--resume", run) == (
        f"{run / 'config.json'} was changed after the search state was saved; "
        "resuming would not continue the same search")

"""``amc search --envs N``: parallel episodes in worker processes (agents/parallel.py).

The decisions under test: a random search is the same search for every N; a learner's
search is the same for the same seed and N, also across a SIGKILL and ``--resume``; the
agent updates once per round of N episodes; bad N is one error line.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces

from agents.buffers import EpisodeRewardBuffer
from amc.cli import main
from helpers import in_process_error
from test_resume import best_policy, curve, in_process, saved_episodes, scalars, stop_after
from test_search_cli import popen_amc, read_episodes, search_args, setup  # noqa: F401  (setup is a fixture)


def test_random_search_is_the_same_for_any_number_of_envs(setup, tmp_path):
    opts = ("--algo", "random", "--episodes", "6", "--seed", "5", "--quiet")
    assert main(search_args(setup, tmp_path / "one", *opts)) == 0
    assert main(search_args(setup, tmp_path / "two", *opts, "--envs", "2")) == 0
    assert curve(tmp_path / "two") == curve(tmp_path / "one")
    assert len(read_episodes(tmp_path / "two")) == 6
    assert best_policy(tmp_path / "two") == best_policy(tmp_path / "one")


def test_ddpg_with_two_envs_resumes_after_sigkill_as_if_never_stopped(setup, tmp_path, capsys):
    episodes, warmup = 8, 2
    opts = ("--episodes", str(episodes), "--warmup", str(warmup), "--seed", "7", "--envs", "2", "--quiet")
    killed = tmp_path / "killed"
    proc = popen_amc(search_args(setup, killed, *opts), tmp_path)
    reference = tmp_path / "reference"  # runs here while the subprocess starts up
    assert main(search_args(setup, reference, *opts)) == 0
    stop_after(proc, killed, 4, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    saved = saved_episodes(killed)
    assert saved % 2 == 0 and warmup <= saved < episodes  # saved between rounds only

    res = in_process("search", "--resume", killed, "--quiet", capsys=capsys)
    assert res.returncode == 0, res.stderr
    assert curve(killed) == curve(reference)
    assert best_policy(killed) == best_policy(reference)

    # one update per round of two episodes: the losses are logged after the second of each
    losses = [step for step, _ in scalars(reference)["train/critic_loss"]]
    assert losses == list(range(warmup + 1, episodes, 2))
    # (the killed-and-resumed search and the reference ran in two processes: same seed and N, same search)


@pytest.mark.parametrize("extra,message", [
    (("--envs", "0"), "--envs must be >= 1, got 0"),
    (("--envs", "4", "--episodes", "6", "--warmup", "4"), "--episodes (6) must be a multiple of --envs (4): the episodes run in rounds "
                                         "of N"),
    (("--envs", "4", "--episodes", "8", "--warmup", "2"), "the warm-up (2) must be a multiple of --envs (4): the "
                                                           "episodes run in rounds of N"),
    (("--envs", "2", "--episodes", "8", "--warmup", "2", "--warmup-convention", "official"),
     "the warm-up (3: --warmup 2, plus 1 under --warmup-convention official) must be a multiple of --envs (2): "
     "the episodes run in rounds of N"),
])
def test_bad_envs_is_one_error_line(setup, tmp_path, capsys, extra, message):
    in_process_error(capsys, message, *search_args(setup, tmp_path / "run", *extra))
    assert not (tmp_path / "run").exists()


def test_buffer_stores_lockstep_episodes_of_several_envs_with_their_own_rewards():
    obs_space = spaces.Box(0.0, 1.0, (3,), np.float32)
    act_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    buf = EpisodeRewardBuffer(20, obs_space, act_space, "cpu", n_envs=2)
    obs = np.zeros((2, 3), np.float32)
    for t, (done, reward) in enumerate(((False, [0.0, 0.0]), (True, [1.5, -2.0]))):
        infos = [{"applied_action": 0.25 * (t + 1)}, {"applied_action": 0.5}]
        buf.add(obs + t, obs + t + 1, np.zeros((2, 1), np.float32), np.array(reward), np.array([done, done]), infos)
        assert buf.pos == (2 if done else 0)  # nothing is stored until the episodes end
    # every step of each env's episode carries that env's final reward
    np.testing.assert_allclose(buf.rewards[:2], [[1.5, -2.0], [1.5, -2.0]])
    # the applied actions, per env, on SB3's [-1, 1] scale
    np.testing.assert_allclose(buf.actions[:2, :, 0], [[-0.5, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(buf.observations[:2, 1], [[0, 0, 0], [1, 1, 1]])
    with pytest.raises(ValueError, match="same step"):
        buf.add(obs, obs, np.zeros((2, 1)), np.zeros(2), np.array([True, False]), [{}, {}])


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc): the forkserver and the env workers."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers through /proc")
def test_a_dead_worker_is_one_error_line_and_the_search_resumes(setup, tmp_path, capsys):
    opts = ("--algo", "random", "--episodes", "40", "--seed", "2", "--envs", "2", "--quiet")
    run = tmp_path / "run"
    proc = popen_amc(search_args(setup, run, *opts), tmp_path)
    stop_after(proc, run, 2, 0)  # signal 0: only wait until two episodes are logged
    workers = _descendants(proc.pid)
    assert workers, "no worker processes found"
    os.kill(workers[-1], signal.SIGKILL)
    try:
        out, err = proc.communicate(timeout=120)  # it must not hang waiting for the dead worker
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err
    assert err.startswith("error: a worker process of --envs 2 died") and len(err.splitlines()) == 1, err
    assert "resume with: amc search --resume" in err
    res = in_process("search", "--resume", run, "--quiet", capsys=capsys)
    assert res.returncode == 0, res.stderr
    assert len(read_episodes(run)) == 40

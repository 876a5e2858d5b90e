"""Nothing silently wrong: one writer per run folder, reward sets that cannot leak, torn records,
numbers checked while parsing, Ctrl-C at any moment, and the underdetermined refit.

(The fault-injection test that kills a search 20 times is ``tests/test_fault_injection.py``,
under ``make test-slow``.)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from amc.cli import build_parser, main
from amc.data import load_splits
from amc.errors import AmcError
from amc.options import OptionError
from amc.runlock import LOCK_FILE, FolderLock
from helpers import (SUBPROCESS_ENV, TINY_NET, TINY_TRAIN, assert_one_error_line, exactly, in_process,
                     in_process_error)
from test_search_cli import popen_amc, read_episodes, search_args, setup  # noqa: F401  (setup is a fixture)

REAL_DATA = Path("/usr/share/datasets/fashion-mnist")
SHIPPED = Path(__file__).resolve().parent.parent / "amc" / "weights" / "fashion-mnist"


# --------------------------------------------------------------------------- one writer per folder

def test_a_folder_lock_excludes_a_second_writer_and_records_the_pid(tmp_path: Path) -> None:
    with FolderLock(tmp_path) as lock:
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(AmcError, match=exactly(f"{tmp_path} is in use by process {os.getpid()}")):
            FolderLock(tmp_path).acquire()
        assert lock.held
    assert not (tmp_path / LOCK_FILE).exists()  # removed on release
    with FolderLock(tmp_path):  # and free again
        pass


def test_a_lock_left_by_a_killed_process_never_blocks(tmp_path: Path) -> None:
    code = ("import sys, time; from amc.runlock import FolderLock; FolderLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=SUBPROCESS_ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(AmcError, match=exactly(f"{tmp_path} is in use by process {holder.pid}")):
            FolderLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (tmp_path / LOCK_FILE).read_text() == f"{holder.pid}\n"  # the file stays, the lock died with it
    with FolderLock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_a_second_search_on_a_running_one_is_refused_and_a_kill_9_does_not_block_the_resume(setup, tmp_path,
                                                                                             capsys) -> None:
    run = tmp_path / "run"
    opts = ("--algo", "random", "--episodes", "400", "--seed", "5", "--quiet")
    proc = popen_amc(search_args(setup, run, *opts), tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not ((run / "episodes.jsonl").is_file() and (run / "episodes.jsonl").read_text().count("\n") >= 2):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert (run / LOCK_FILE).read_text() == f"{proc.pid}\n"
        busy = f"{run} is in use by process {proc.pid}"
        in_process_error(capsys, busy, "search", "--resume", run, "--quiet")
        episodes = (run / "episodes.jsonl").read_text()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert episodes in (run / "episodes.jsonl").read_text()  # the refused resume wrote nothing
    assert (run / LOCK_FILE).is_file()  # left by the killed search: it must not block
    res = in_process(capsys, "search", "--resume", run, "--quiet", "--json")
    assert res.returncode == 0, res.stderr
    assert [e["episode"] for e in read_episodes(run)] == list(range(400))
    assert not (run / LOCK_FILE).exists()


def test_search_resume_and_bench_refuse_a_folder_another_writer_holds(setup, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(search_args(setup, run, "--algo", "random", "--episodes", "2", "--quiet")) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    bench = ["bench", "quality", "--model", f"{setup['model']}:factory", "--weights", str(setup["weights"]),
             "--data-dir", str(setup["data"]), "--reward-set-size", "200", "--calib-batches", "2",
             "--calib-batch-size", "20", "--seeds", "0", "--algos", "random", "--episodes", "2", "--json"]
    with FolderLock(run), FolderLock(empty):
        before = sorted(p.name for p in run.iterdir())
        in_process_error(capsys, f"{run} is in use by process {os.getpid()}", "search", "--resume", run)
        in_process_error(capsys, f"{empty} is in use by process {os.getpid()}", *search_args(setup, empty))
        in_process_error(capsys, f"{empty} is in use by process {os.getpid()}", *bench, "--out", empty)
        in_process_error(capsys, f"{empty} is in use by process {os.getpid()}", *bench, "--resume", "--out", empty)
        assert sorted(p.name for p in run.iterdir()) == before
        assert sorted(p.name for p in empty.iterdir()) == [LOCK_FILE]
    assert main(search_args(setup, empty, "--algo", "random", "--episodes", "1", "--quiet")) == 0  # free again


def test_a_search_killed_during_its_set_up_starts_again_on_resume(setup, tmp_path, capsys) -> None:
    """config.json written, no state yet (SIGKILL during the set-up): --resume runs it from the start."""
    opts = ("--algo", "random", "--episodes", "3", "--seed", "2", "--quiet")
    reference = tmp_path / "reference"
    assert main(search_args(setup, reference, *opts)) == 0
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text((reference / "config.json").read_text())
    (run / LOCK_FILE).write_text("999999\n")  # and the lock file of the killed process
    res = in_process(capsys, "search", "--resume", run, "--json", "--quiet")
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [f"note: the search in {run} was stopped during its set-up, before its first "
                                       "episode; starting it again with the settings of its config.json"]
    assert read_episodes(run) == [{**e, "seconds": r["seconds"]} for e, r in zip(read_episodes(reference),
                                                                                 read_episodes(run))]


# --------------------------------------------------------------------------- torn records

def test_a_torn_episodes_line_is_ignored_with_a_warning(setup, tmp_path, capsys, monkeypatch) -> None:
    import agents.callbacks

    opts = ("--algo", "random", "--episodes", "5", "--seed", "4", "--quiet")
    reference = tmp_path / "reference"
    assert main(search_args(setup, reference, *opts)) == 0
    run = tmp_path / "run"
    real = agents.callbacks.EpisodeLog.on_episode

    def dies_in_the_third(self, info):
        if self.episodes == 2:  # as a kill in the middle of writing the third line
            self.jsonl.write('{"episode": 2, "reward": -0.')
            self.jsonl.flush()
            raise KeyboardInterrupt
        return real(self, info)

    monkeypatch.setattr(agents.callbacks.EpisodeLog, "on_episode", dies_in_the_third)
    assert main(search_args(setup, run, *opts)) == 130
    monkeypatch.setattr(agents.callbacks.EpisodeLog, "on_episode", real)
    assert (run / "episodes.jsonl").read_text().count("\n") == 2
    res = in_process(capsys, "search", "--resume", run, "--quiet")
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [f"warning: {run / 'episodes.jsonl'} ends in a torn line (28 characters, "
                                       "no newline); ignored"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_episodes(run)) == strip(read_episodes(reference))


def test_a_torn_bench_summary_is_survived(setup, tmp_path, capsys) -> None:
    out = tmp_path / "q"
    bench = ["bench", "quality", "--model", f"{setup['model']}:factory", "--weights", str(setup["weights"]),
             "--data-dir", str(setup["data"]), "--reward-set-size", "200", "--calib-batches", "2",
             "--calib-batch-size", "20", "--seeds", "0", "--algos", "random", "--episodes", "2", "--json",
             "--out", str(out)]
    assert main(bench) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    text = (out / "summary.json").read_text()
    (out / "summary.json").write_text(text[: len(text) // 2])
    res = in_process(capsys, *bench, "--resume")
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines()[0].startswith(f"warning: {out / 'summary.json'} is torn (")
    assert json.loads((out / "summary.json").read_text())["mean"] == first["mean"]


def test_bench_quality_stopped_by_ctrl_c_says_so_in_one_line_and_resumes(setup, tmp_path, capsys,
                                                                         monkeypatch) -> None:
    import agents.search
    from agents.interrupt import SearchInterrupted

    out = tmp_path / "q"
    bench = ["bench", "quality", "--model", f"{setup['model']}:factory", "--weights", str(setup["weights"]),
             "--data-dir", str(setup["data"]), "--reward-set-size", "200", "--calib-batches", "2",
             "--calib-batch-size", "20", "--seeds", "0", "1", "--algos", "random", "--episodes", "2", "--json",
             "--out", str(out)]
    real = agents.search.search
    calls = []

    def second_is_stopped(spec, cfg, run, **kw):
        calls.append(run)
        if len(calls) == 2:
            raise SearchInterrupted(Path(run), None, cfg.episodes, signal.SIGINT)
        return real(spec, cfg, run, **kw)

    monkeypatch.setattr(agents.search, "search", second_is_stopped)
    res = in_process(capsys, *bench)
    assert res.returncode == 130
    assert res.stderr.splitlines()[-1] == (f"stopped by SIGINT; finished searches and the saved states of stopped "
                                           f"ones are in {out}; continue with the same command and --resume")
    assert "Traceback" not in res.stderr and not (out / "summary.json").exists()
    monkeypatch.setattr(agents.search, "search", real)
    res = in_process(capsys, *bench, "--resume")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["seeds"] == [0, 1]


def test_search_interrupted_is_one_line_and_survives_pickling(tmp_path: Path) -> None:
    import pickle

    from agents.interrupt import SearchInterrupted

    stop = SearchInterrupted(tmp_path, 3, 12, signal.SIGINT)
    assert str(stop) == (f"stopped by SIGINT after 3 of 12 episodes (the search state is saved in {tmp_path}); "
                         f"resume with: amc search --resume {tmp_path}")
    again = pickle.loads(pickle.dumps(stop))
    assert str(again) == str(stop) and again.exit_code == 130 and again.run == tmp_path
    assert "\n" not in str(SearchInterrupted(tmp_path, None, 12, signal.SIGTERM, resumable=True))


# --------------------------------------------------------------------------- reward sets that cannot leak

def base_with_record(root: Path, data_dir: Path, seed: int = 0, size: int = 300, split: bool = True) -> Path:
    """The tiny net saved as ``amc train`` saves a base model: model.safetensors + model.json with its split."""
    from amc.checkpoint import save_checkpoint
    from amc.models import ModelSpec, build_model

    torch.manual_seed(0)
    model = build_model(ModelSpec(f"{TINY_NET}:factory", 1, 10))
    meta = {"kind": "base", "model": {"name": f"{TINY_NET}:factory", "in_channels": 1, "num_classes": 10,
                                      "width": 1.0}}
    if split:
        meta["split"] = load_splits("fashion-mnist", str(data_dir), seed, size).record
    save_checkpoint(root, model, meta)
    return root / "model.safetensors"


def overlap(data_dir: Path, n: int, base: tuple[int, int], mine: tuple[int, int]) -> int:
    """Images of reward set ``mine`` (seed, size) that the split ``base`` trained on, counted from the indices."""
    held = set(np.random.default_rng(base[0]).permutation(n)[:base[1]].tolist())
    return sum(i not in held for i in np.random.default_rng(mine[0]).permutation(n)[:mine[1]].tolist())


def prune_args(weights: Path, data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["prune", "--model", f"{TINY_NET}:factory", "--weights", str(weights), "--data-dir", str(data_dir),
            "--policy", "uniform:0.5", "--calib-batches", "1", "--calib-batch-size", "8", "--out", str(out),
            "--json", *extra]


def test_a_leaking_reward_set_is_refused_and_the_override_is_recorded(tmp_path, tiny_data_dir, capsys) -> None:
    weights = base_with_record(tmp_path / "base", tiny_data_dir, seed=0, size=300)
    for extra, (seed, size) in ((("--split-seed", "1", "--reward-set-size", "300"), (1, 300)),
                                (("--reward-set-size", "400"), (0, 400))):
        n = overlap(tiny_data_dir, TINY_TRAIN, (0, 300), (seed, size))
        assert n > 0
        message = (f"the reward set (--split-seed {seed} --reward-set-size {size}) holds {n} images the base model "
                   "was trained on (weights model.safetensors held out the reward set of --split-seed 0 "
                   "--reward-set-size 300); use that split (or a smaller --reward-set-size with --split-seed 0), "
                   "or pass --allow-train-overlap to score on them anyway")
        in_process_error(capsys, message, *prune_args(weights, tiny_data_dir, tmp_path / "p", *extra))
    assert not any((tmp_path / "p").iterdir())

    n = overlap(tiny_data_dir, TINY_TRAIN, (0, 300), (1, 300))
    res = in_process(capsys, *prune_args(weights, tiny_data_dir, tmp_path / "p", "--split-seed", "1",
                                         "--reward-set-size", "300", "--allow-train-overlap"))
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [
        f"warning: the reward set (--split-seed 1 --reward-set-size 300) holds {n} images the base model was trained "
        "on (weights model.safetensors held out the reward set of --split-seed 0 --reward-set-size 300); its "
        "accuracies are optimistic (--allow-train-overlap)"]
    meta = json.loads((tmp_path / "p" / "model.json").read_text())
    assert meta["spec"]["allow_train_overlap"] is True and meta["split"]["train_overlap"] == n

    # the same split, or a subset of it (same seed, fewer images), passes without a word
    res = in_process(capsys, *prune_args(weights, tiny_data_dir, tmp_path / "q", "--reward-set-size", "200"))
    assert res.returncode == 0 and res.stderr == ""
    meta = json.loads((tmp_path / "q" / "model.json").read_text())
    assert meta["split"]["train_overlap"] == 0 and meta["spec"]["allow_train_overlap"] is False

    # finetune checks the checkpoint's split as well: here the override was recorded, so it goes on
    res = in_process(capsys, "finetune", "--checkpoint", tmp_path / "p", "--epochs", "1", "--batch-size", "512",
                     "--data-dir", tiny_data_dir, "--out", tmp_path / "ft", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "ft" / "model.json").read_text())["split"]["train_overlap"] == n
    # a checkpoint that leaks without having said so is refused, unless --allow-train-overlap
    meta = json.loads((tmp_path / "p" / "model.json").read_text())
    meta["spec"]["allow_train_overlap"] = False
    (tmp_path / "p" / "model.json").write_text(json.dumps(meta))
    ft = ["finetune", "--checkpoint", tmp_path / "p", "--epochs", "1", "--batch-size", "512", "--data-dir",
          tiny_data_dir, "--json"]
    assert "holds" in in_process_error(capsys, None, *ft, "--out", tmp_path / "ft2")
    assert in_process(capsys, *ft, "--allow-train-overlap", "--out", tmp_path / "ft3").returncode == 0


def test_weights_that_should_carry_a_record_and_weights_that_need_not(tmp_path, tiny_data_dir, capsys,
                                                                      monkeypatch) -> None:
    import amc.overlap

    # amc train's output always holds its split: a model.json without one is refused
    weights = base_with_record(tmp_path / "base", tiny_data_dir, split=False)
    message = in_process_error(capsys, None, *prune_args(weights, tiny_data_dir, tmp_path / "p"))
    assert message.startswith(f"{weights.parent / 'model.json'} lack the record of the data split")
    assert message.endswith("pass --allow-train-overlap to score on it anyway")
    # the shipped weights likewise
    shipped = tmp_path / "shipped" / "fashion-mnist"
    shipped.mkdir(parents=True)
    (shipped / "tiny.safetensors").write_bytes(weights.read_bytes())
    (shipped / "tiny.json").write_text(json.dumps({"kind": "base", "model": {}}))
    monkeypatch.setattr(amc.overlap, "WEIGHTS_DIR", tmp_path / "shipped")
    message = in_process_error(capsys, None, *prune_args(shipped / "tiny.safetensors", tiny_data_dir, tmp_path / "p"))
    assert message.startswith("the shipped weights tiny.safetensors lack the record of the data split")
    # user weights with no record at all: one warning line, then on
    plain = tmp_path / "plain.pt"
    torch.save(_state(weights), plain)
    res = in_process(capsys, *prune_args(plain, tiny_data_dir, tmp_path / "p"))
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [f"warning: weights {plain} carry no record of the data split they were "
                                       "trained with; the reward set is not checked for their training images "
                                       "(amc train writes one: model.json)"]


def _state(weights: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(weights))


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_the_shipped_weights_record_their_split_and_a_leaking_one_is_refused(tmp_path, capsys) -> None:
    from amc.overlap import check_reward_set

    splits = load_splits("fashion-mnist", str(REAL_DATA), 0, 5000)
    for record in sorted(SHIPPED.glob("*.json")):
        split = json.loads(record.read_text())["split"]
        assert {k: split[k] for k in ("split_seed", "reward_set_size")} == {"split_seed": 0, "reward_set_size": 5000}
        assert split["reward_indices_sha256"] == splits.record["reward_indices_sha256"], record.name
        assert check_reward_set(splits, record.with_suffix(".safetensors")) == 0
    subset = load_splits("fashion-mnist", str(REAL_DATA), 0, 1000)
    assert check_reward_set(subset, SHIPPED / "plain20.safetensors") == 0  # fewer images of the same seed
    n = overlap(REAL_DATA, 60000, (0, 5000), (1, 5000))
    other = load_splits("fashion-mnist", str(REAL_DATA), 1, 5000)
    with pytest.raises(AmcError, match=f"holds {n} images the base model was trained on"):
        check_reward_set(other, SHIPPED / "plain20.safetensors")
    assert check_reward_set(other, SHIPPED / "plain20.safetensors", allow=True) == n  # the way out, with a warning
    assert other.record["train_overlap"] == n and "--allow-train-overlap" in capsys.readouterr().err
    message = in_process_error(capsys, None, "prune", "--model", "plain20", "--split-seed", "1", "--policy",
                               "uniform:0.5", "--out", tmp_path / "never")
    assert message.startswith(f"the reward set (--split-seed 1 --reward-set-size 5000) holds {n} images the base "
                              "model was trained on (weights plain20.safetensors held out the reward set of "
                              "--split-seed 0 --reward-set-size 5000)")


# --------------------------------------------------------------------------- numbers, parsed

@pytest.mark.parametrize("args,message", [
    (["train", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["train", "--epochs", "-1"], "--epochs must be >= 1, got -1"),
    (["train", "--lr", "0"], "--lr must be > 0, got 0.0"),
    (["train", "--weight-decay", "-1"], "--weight-decay must be >= 0, got -1.0"),
    (["finetune", "--checkpoint", "x", "--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["finetune", "--checkpoint", "x", "--epochs", "1", "--batch-size", "-5"], "--batch-size must be >= 1, got -5"),
    (["eval", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["eval", "--checkpoint", "x", "--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["prune", "--policy", "uniform:0.5", "--calib-batch-size", "0"], "--calib-batch-size must be >= 1, got 0"),
    (["prune", "--policy", "uniform:0.5", "--reward-set-size", "-1"], "--reward-set-size must be >= 1, got -1"),
    (["bench", "prune", "--trials", "0"], "--trials must be >= 1, got 0"),
    (["bench", "search", "--episodes", "0"], "--episodes must be >= 1, got 0"),
    (["bench", "search", "--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["bench", "quality", "--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["search", "--buffer-episodes", "-1"], "--buffer-episodes must be >= 1, got -1"),
    (["search", "--critic-lr", "inf"], "--critic-lr must be a finite number >= 0, got inf"),
])
def test_numbers_out_of_range_are_refused_while_parsing(capsys, args, message) -> None:
    with pytest.raises(OptionError, match=exactly(message)):
        build_parser().parse_args(args)
    res = in_process(capsys, *args)  # and the command line says it in one line
    assert_one_error_line(res, message)


def number_options() -> list[tuple[list[str], str, object]]:
    """(command words, option, type) of every option of every command that takes a number."""
    out = []

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, p in action.choices.items():
                    walk(p, [*words, sub])
            elif action.option_strings and action.type is not None and (
                    action.type in (int, float) or getattr(action.type, "__name__", "") in ("int", "float", "seed_int")
                    or getattr(action.type, "amc_range_checked", False)):
                out.append((words, action.option_strings[0], action.type))
    walk(build_parser(), [])
    return out


def test_every_number_option_refuses_an_absurd_value_while_parsing(capsys) -> None:
    """-1000000000 for an integer, nan for a float: refused by the parser, before the command runs."""
    options = number_options()
    assert len(options) > 40 and any(o == "--batch-size" for _, o, _ in options)
    accepted = []
    for words, option, kind in options:
        bad = "nan" if getattr(kind, "__name__", "") == "float" or kind is float or "float" in repr(kind) \
            else "-1000000000"
        capsys.readouterr()
        try:
            build_parser().parse_args([*words, option, bad])
        except OptionError as e:
            assert str(e).startswith(option + " "), e
            continue
        except SystemExit:  # argparse's own refusal (a seed); not a missing argument further on
            err = capsys.readouterr().err
            if f"argument {option}:" in err and "required" not in err:
                continue
        accepted.append(f"amc {' '.join(words)} {option} {bad}")
    assert [a for a in accepted if a.rsplit(" ", 1)[0] not in PENDING] == []


PENDING: set[str] = set()
"""Options allowed to lack a parse-time range check (none: every number option has one)."""


# --------------------------------------------------------------------------- Ctrl-C at any moment

HOOK = '''
import sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
'''


@pytest.mark.parametrize("module", ["amc.cli", "amc.cli.search", "torch"])
def test_ctrl_c_while_importing_is_one_line_and_130(tmp_path, module) -> None:
    """A KeyboardInterrupt raised while ``python -m amc`` imports the command line, a command, or torch."""
    (tmp_path / "sitecustomize.py").write_text(HOOK.format(module=module))
    env = {**SUBPROCESS_ENV, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.run([sys.executable, "-m", "amc", "eval", "--model", "plain20", "--json"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (130, "error: interrupted\n")


def test_ctrl_c_in_a_command_is_one_line_and_130(capsys, monkeypatch) -> None:
    import amc.cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(amc.cli, "build_parser", interrupted)
    res = in_process(capsys, "eval")
    assert (res.returncode, res.stderr) == (130, "error: interrupted\n")


# --------------------------------------------------------------------------- the refit

def test_an_underdetermined_refit_warns_once_per_layer_with_the_counts(capsys) -> None:
    from amc.pruner import ChannelPruner
    from amc.models import ModelSpec, build_model

    torch.manual_seed(0)
    model = build_model(ModelSpec(f"{TINY_NET}:factory", 1, 10)).eval()
    batches = [torch.randn(2, 1, 28, 28)]  # 2 images: 2 rows for the linear layer, 2 x 1 for the conv
    pruner = ChannelPruner(model, (1, 28, 28), batches, points_per_image=1)
    capsys.readouterr()
    for _ in range(3):
        pruner.prune([2, 4])
    err = capsys.readouterr().err.splitlines()
    hint = "per output (raise --calib-batches, --calib-batch-size or --points-per-image)"
    assert sorted(err) == [  # the conv "3" reads 2 of 4 channels x 3 x 3; the linear "7" 4 of 8 features
        f"warning: the least-squares refit of 3 is underdetermined: 2 calibration rows for 18 unknowns {hint}",
        f"warning: the least-squares refit of 7 is underdetermined: 2 calibration rows for 4 unknowns {hint}"]
    assert pruner.cache.underdetermined == {"3": (2, 18), "7": (2, 4)}
    enough = ChannelPruner(model, (1, 28, 28), [torch.randn(50, 1, 28, 28)], points_per_image=10)
    capsys.readouterr()
    enough.prune([2, 4])
    assert capsys.readouterr().err == "" and enough.cache.underdetermined == {}

"""``amc search`` end to end: files, TensorBoard, budget, determinism, every algo, bad input."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from amc.cli import main
from helpers import SUBPROCESS_ENV, assert_one_error_line, in_process_error, write_idx

TINY_FACTORY = '''
from torch import nn


def factory():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
'''


def square_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise with one white square whose side tells the class: learnable in seconds, and
    pruning visibly hurts it, so episodes get different rewards."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    x = rng.integers(0, 120, size=(n, 28, 28), dtype=np.uint8)
    for i, k in enumerate(y):
        side = 4 + 2 * k
        r, c = rng.integers(0, 29 - side, size=2)
        x[i, r:r + side, c:c + side] = 255
    return x, y.astype(np.uint8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A square-images dataset, ``tiny.py:factory`` and its lightly trained weights."""
    root = tmp_path_factory.mktemp("search")
    data = root / "data"
    data.mkdir()
    for split, n, seed in (("train", 1000, 0), ("t10k", 100, 1)):
        x, y = square_images(n, seed)
        write_idx(data / f"{split}-images-idx3-ubyte.gz", x)
        write_idx(data / f"{split}-labels-idx1-ubyte.gz", y)
    (root / "tiny.py").write_text(TINY_FACTORY)
    namespace: dict = {}
    exec(TINY_FACTORY, namespace)
    torch.manual_seed(0)
    model = namespace["factory"]()
    x, y = square_images(1000, 0)
    xt = (torch.from_numpy(x).float().unsqueeze(1) / 255 - 0.2860) / 0.3530
    yt = torch.from_numpy(y).long()
    opt = torch.optim.Adam(model.parameters(), 0.02)
    for _ in range(60):
        idx = torch.randint(0, len(yt), (100,))
        loss = F.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), root / "tiny.pt")
    # the record amc train keeps beside its weights: the reward set held out (tests/test_reliability.py)
    from amc.data import load_splits

    split = load_splits("fashion-mnist", str(data), 0, 200).record
    (root / "tiny.json").write_text(json.dumps({"kind": "base", "split": split}))
    return {"root": root, "data": data, "model": root / "tiny.py", "weights": root / "tiny.pt"}


def search_args(setup: dict[str, Path], run: Path, *extra: str) -> list[str]:
    return ["search", "--model", f"{setup['model']}:factory", "--weights", str(setup["weights"]),
            "--dataset", "fashion-mnist", "--data-dir", str(setup["data"]), "--reward-set-size", "200",
            "--calib-batches", "2", "--calib-batch-size", "20", "--run", str(run), *extra]


def popen_amc(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "amc", *args], cwd=cwd, env=SUBPROCESS_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_episodes(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]


def test_search_end_to_end_and_deterministic(setup):
    """Two seeded DDPG searches in subprocesses (side by side): outputs, curves, budget, equality."""
    root = setup["root"]
    args = ("--episodes", "6", "--warmup", "2", "--target-flops", "0.5", "--seed", "3", "--json")
    procs = [popen_amc(search_args(setup, root / name, *args), root) for name in ("run_a", "run_b")]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err and "search" in err  # the progress bar is on stderr
    run = root / "run_a"
    for name in ("config.json", "best_policy.json", "best_policy.png", "episodes.jsonl"):
        assert (run / name).is_file(), name

    result = json.loads(outs[0][0].strip().splitlines()[-1])
    assert result["episodes"] == 6
    assert "best_test_top1" not in result and "test_top1" not in json.dumps(result)
    best = json.loads((run / "best_policy.json").read_text())
    assert best["flops_ratio"] <= 0.5 and best["flops"] <= 0.5 * json.loads((run / "config.json").read_text())["flops"]
    assert result["best_reward"] == best["reward"] and result["best_flops_ratio"] == best["flops_ratio"]
    assert {"layers", "reward", "reward_top1", "episode"} <= best.keys()

    episodes = read_episodes(run)
    assert [e["episode"] for e in episodes] == list(range(6))
    for e in episodes:
        assert {"reward", "reward_top1", "flops_ratio", "params_ratio", "ratios"} <= e.keys()
        assert e["flops_ratio"] <= 0.5 and e["reward"] == pytest.approx(e["reward_top1"] / 100 - 1)
    assert max(e["reward"] for e in episodes) == best["reward"]
    assert len({e["reward"] for e in episodes}) > 1  # the rewards tell policies apart

    config = json.loads((run / "config.json").read_text())
    assert config["config"]["episodes"] == 6 and config["config"]["seed"] == 3
    assert config["split"]["reward_set_size"] == 200
    assert {"torch", "torchvision", "stable-baselines3", "gymnasium", "numpy", "amc"} <= config["versions"].keys()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = acc.Tags()
    for tag in ("episode/reward", "episode/reward_top1", "episode/flops_ratio", "episode/params_ratio",
                "best/reward", "train/actor_loss", "train/critic_loss"):
        assert tag in tags["scalars"], tag
    assert [s.step for s in acc.Scalars("episode/reward")] == list(range(6))
    assert [s.value for s in acc.Scalars("episode/reward")] == pytest.approx([e["reward"] for e in episodes])
    assert [s.step for s in acc.Scalars("train/critic_loss")] == [2, 3, 4, 5]  # updates after each post-warm-up episode
    assert "best/policy" in tags["images"]
    assert any("best/policy" in t for t in tags["tensors"])  # the text table

    # same seed, same CPU: the same curve and the same best policy
    other = root / "run_b"
    assert [e["reward"] for e in read_episodes(other)] == [e["reward"] for e in episodes]
    assert [e["ratios"] for e in read_episodes(other)] == [e["ratios"] for e in episodes]
    assert json.loads((other / "best_policy.json").read_text())["layers"] == best["layers"]


@pytest.mark.parametrize("algo,reward", [("td3", "acc"), ("sac", "params"), ("random", "flops")])
def test_other_algos_and_rewards(setup, tmp_path, capsys, algo, reward):
    run = tmp_path / "run"
    extra = ["--target-flops", "0.4"] if reward == "acc" else []
    code = main(search_args(setup, run, "--algo", algo, "--reward", reward, "--episodes", "3", "--warmup", "1",
                            "--quiet", "--json", *extra))
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    episodes = read_episodes(run)
    assert result["episodes"] == len(episodes) == 3
    assert result["best_reward"] == max(e["reward"] for e in episodes)
    if reward == "acc":
        assert all(e["flops_ratio"] <= 0.4 for e in episodes)
    if reward != "acc":
        resource = "flops" if reward == "flops" else "params"
        best = json.loads((run / "best_policy.json").read_text())
        assert best["reward"] == pytest.approx((best["reward_top1"] / 100 - 1) * np.log(best[resource]))
    if algo == "random":  # uniform on [lbound, 1]
        assert all(0.2 - 1 / 16 <= r <= 1.0 for e in episodes for r in e["ratios"])


def test_random_search_is_deterministic_and_seed_matters(setup, tmp_path, capsys):
    curves = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert main(search_args(setup, tmp_path / name, "--algo", "random", "--episodes", "3", "--seed", seed,
                                "--quiet")) == 0
        curves.append([e["ratios"] for e in read_episodes(tmp_path / name)])
    capsys.readouterr()
    assert curves[0] == curves[1] != curves[2]


@pytest.mark.parametrize("extra,message", [
    (["--target-flops", "nan"], "--target-flops must be in (0, 1], got nan"),
    (["--target-flops", "0"], "--target-flops must be in (0, 1], got 0.0"),
    (["--target-flops", "1.5"], "--target-flops must be in (0, 1], got 1.5"),
    (["--episodes", "10", "--warmup", "10"],
     "--episodes (10) must be greater than --warmup (10), or the agent never learns"),
    # argparse quotes the choices in some Python versions and not in others
    (["--reward", "joules"], "argument --reward: invalid choice: 'joules' (choose from *acc*, *flops*, *params*, "
                             "*latency*) (see: amc search --help)"),
    (["--algo", "ppo"], "argument --algo: invalid choice: 'ppo' (choose from *ddpg*, *td3*, *sac*, *random*) "
                        "(see: amc search --help)"),
    (["--lbound", "0"], "--lbound must be in (0, 1], got 0.0"),
    (["--target-flops", "0.01"], None),  # unreachable at the lower bound: the engine says why
])
def test_bad_input_is_one_error_line(setup, tmp_path, capsys, extra, message):
    run = tmp_path / "run"
    try:
        code = main(search_args(setup, run, "--quiet", *extra))
    except SystemExit as e:  # argparse errors exit from inside the parser
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if message is not None:
        assert lines[0].replace("'", "*") == f"error: {message}".replace("'", "*")
    else:
        assert "unreachable" in lines[0]
    assert not run.exists() or not any(run.iterdir())  # nothing written


def test_unknown_model_and_non_empty_run_folder(setup, tmp_path, capsys):
    args = search_args(setup, tmp_path / "run", "--quiet")
    args[args.index("--model") + 1] = "resnet1000"
    args[args.index("--weights"):args.index("--weights") + 2] = []
    assert main(args) == 2
    assert "resnet1000" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "episodes.jsonl").write_text("{}\n")
    assert main(search_args(setup, busy, "--quiet")) == 2
    assert capsys.readouterr().err == (f"error: run folder {busy} already exists and is not empty; "
                                       "choose another --run or delete it\n")
    assert (busy / "episodes.jsonl").read_text() == "{}\n"


def test_bad_input_in_a_real_subprocess(setup, tmp_path, run_amc):
    proc = run_amc(*search_args(setup, tmp_path / "run", "--target-flops", "nan"))
    assert assert_one_error_line(proc) == "--target-flops must be in (0, 1], got nan"


def test_report_compares_base_uniform_and_amc(setup, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(search_args(setup, run, "--algo", "random", "--episodes", "3", "--quiet")) == 0
    capsys.readouterr()
    assert main(["report", "--run", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    base, uniform, amc_row = out["rows"]
    assert [base["name"], uniform["name"], amc_row["name"]] == ["base", "uniform@0.5", "AMC"]
    assert base["flops_ratio"] == 1.0 and uniform["flops_ratio"] <= 0.5 and amc_row["flops_ratio"] <= 0.5
    best = json.loads((run / "best_policy.json").read_text())
    # the same pruner settings as the search: the AMC row reproduces the search's reward-set accuracy
    assert amc_row["reward_top1"] == pytest.approx(best["reward_top1"])
    assert amc_row["flops"] == best["flops"]
    assert all(0 <= r[k] <= 100 for r in out["rows"] for k in ("reward_top1", "test_top1"))

    # the int8 row: the best policy pruned, then quantized (a fine-tune would sit between the two)
    pytest.importorskip("onnxruntime")
    data = ["--data-dir", str(setup["data"])]
    assert main(["prune", "--model", f"{setup['model']}:factory", "--weights", str(setup["weights"]), *data,
                 "--reward-set-size", "200", "--calib-batches", "2", "--calib-batch-size", "20", "--policy",
                 str(run / "best_policy.json"), "--out", str(tmp_path / "p"), "--json"]) == 0
    assert main(["quantize", "--checkpoint", str(tmp_path / "p"), *data, "--out", str(tmp_path / "q"),
                 "--calib-batches", "2", "--calib-batch-size", "8", "--repeats", "1", "--batch-sizes", "2",
                 "--exporter", "torchscript", "--json"]) == 0
    capsys.readouterr()
    assert main(["report", "--run", str(run), "--int8", str(tmp_path / "q"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    q = json.loads((tmp_path / "q" / "model.json").read_text())
    assert [r["name"] for r in rows] == ["base", "uniform@0.5", "AMC", "AMC+int8"]
    assert rows[3]["test_top1"] == q["test_top1"] and rows[3]["flops"] == amc_row["flops"]
    assert main(["report", "--run", str(run), "--int8", str(tmp_path / "p")]) == 2  # not a quantized folder


def test_bench_quality_summarises_uniform_random_and_ddpg(setup, tmp_path, capsys):
    out_dir = tmp_path / "q"
    assert main(["bench", "quality", "--model", f"{setup['model']}:factory", "--weights", str(setup["weights"]),
                 "--data-dir", str(setup["data"]), "--reward-set-size", "200", "--calib-batches", "2",
                 "--calib-batch-size", "20", "--seeds", "0", "--algos", "random", "ddpg", "--episodes", "4",
                 "--warmup", "2", "--out", str(out_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["mean"]) == {"uniform", "random", "ddpg"}
    assert all(summary["mean"][k]["flops_ratio"] <= 0.5 for k in summary["mean"])
    for algo in ("random", "ddpg"):
        best = json.loads((out_dir / f"{algo}-seed0" / "best_policy.json").read_text())
        assert summary["runs"][algo][0]["reward_top1"] == pytest.approx(best["reward_top1"])
    assert json.loads((out_dir / "summary.json").read_text())["mean"] == summary["mean"]
    assert (out_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"  # the learning curves beside it


def test_bench_quality_in_parallel_equals_serial_and_resumes_finished_runs(setup, tmp_path, capsys, monkeypatch):
    common = ["bench", "quality", "--model", f"{setup['model']}:factory", "--weights", str(setup["weights"]),
              "--data-dir", str(setup["data"]), "--reward-set-size", "200", "--calib-batches", "2",
              "--calib-batch-size", "20", "--seeds", "0", "1", "--algos", "random", "--episodes", "3",
              "--threads", "1", "--fill-budget", "--json"]
    assert main(common + ["--out", str(tmp_path / "serial")]) == 0
    serial = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(common + ["--jobs", "2", "--out", str(tmp_path / "par")]) == 0
    par = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert par["mean"] == serial["mean"] and par["runs"]["random"] == [
        {**r, "seconds": p["seconds"]} for r, p in zip(serial["runs"]["random"], par["runs"]["random"])]
    assert all(r["flops_ratio"] > 0.4 for r in par["runs"]["random"])  # --fill-budget reached the searches
    # a second pass over the same folder only reports the finished searches
    episodes = (tmp_path / "par" / "random-seed0" / "episodes.jsonl").read_text()
    # ... and evaluates nothing again: base, uniform and each best policy are kept in evaluations.json
    import amc.train

    monkeypatch.setattr(amc.train, "evaluate", lambda *a, **k: pytest.fail("evaluated again on --resume"))
    assert main(common + ["--jobs", "2", "--resume", "--out", str(tmp_path / "par")]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["mean"] == par["mean"]
    # searches run with other settings are not reported under this benchmark's
    in_process_error(capsys, f"{tmp_path / 'par' / 'random-seed0'} holds a search with other settings than this "
                     "command's (lbound 0.2 there, 0.3 here); give the settings it was run with, or another --out",
                     *common, "--lbound", "0.3", "--resume", "--out", str(tmp_path / "par"))
    # ... but a random search run by `amc search --algo random`, which records a warm-up, is
    monkeypatch.undo()  # a new folder: its uniform is evaluated
    search = ["search", *common[2:common.index("--seeds")], "--episodes", "3", "--threads", "1", "--fill-budget",
              "--algo", "random", "--seed", "0"]
    assert main(search + ["--run", str(tmp_path / "own" / "random-seed0")]) == 0
    assert json.loads((tmp_path / "own" / "random-seed0" / "config.json").read_text())["config"]["warmup"] == 100
    capsys.readouterr()
    assert main(common[:common.index("--seeds")] + ["--seeds", "0", "--algos", "random", "--episodes", "3",
                                                   "--threads", "1", "--fill-budget", "--json", "--resume",
                                                   "--out", str(tmp_path / "own")]) == 0
    own = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert own["runs"]["random"][0]["reward_top1"] == par["runs"]["random"][0]["reward_top1"]
    # recovered, per seed and as mean +- std, on the reward set and on the test set
    base, uniform = par["base"], par["uniform"]
    for r, u in zip(par["runs"]["random"], uniform):
        for k in ("reward", "test"):
            lost = base[f"{k}_top1"] - u[f"{k}_top1"]  # nan where uniform lost nothing (a tiny model)
            want = (r[f"{k}_top1"] - u[f"{k}_top1"]) / lost if lost > 0 else math.nan
            assert r[f"recovered_{k}"] == pytest.approx(want, nan_ok=True)
    for k in ("recovered_reward", "recovered_test"):
        recs = [r[k] for r in par["runs"]["random"]]
        assert par["mean"]["random"][k] == pytest.approx(np.mean(recs), nan_ok=True)
        assert par["std"]["random"][k] == pytest.approx(np.std(recs, ddof=1), nan_ok=True)
    assert (tmp_path / "par" / "random-seed0" / "episodes.jsonl").read_text() == episodes


def test_report_never_moves_the_pruners_own_model(setup, tmp_path, monkeypatch):
    """On CUDA, evaluating the base model in place left it on the GPU and the next prune failed
    (index_select with CPU indices); the base row must be measured on a copy."""
    import amc.spec
    import amc.train
    from amc.api import compare

    run = tmp_path / "run"
    assert main(search_args(setup, run, "--algo", "random", "--episodes", "2", "--quiet")) == 0
    built, seen = [], []
    real_build = amc.spec.PruneSpec.build
    monkeypatch.setattr(amc.spec.PruneSpec, "build", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    monkeypatch.setattr(amc.train, "evaluate", lambda net, data, dev, *a, **k: seen.append(net) or 50.0)
    rows = compare(str(run))["rows"]
    assert [r["reward_top1"] for r in rows] == [50.0] * 3
    assert len(built) == 1 and len(seen) == 6
    assert all(net is not built[0].pruner.model for net in seen)


@pytest.mark.parametrize("extra, message", [
    (["--jobs", "0", "--out", "{tmp}/q"], "--jobs must be >= 1, got 0"),
    (["--resume", "--out", "{tmp}/missing"], "--resume: {tmp}/missing is not a folder of amc bench quality"),
])
def test_bench_quality_refuses_bad_jobs_and_resume(tmp_path, capsys, extra, message):
    extra = [e.format(tmp=tmp_path) for e in extra]
    in_process_error(capsys, message.format(tmp=tmp_path), "bench", "quality", "--model", "plain20", *extra)
    assert not (tmp_path / "q").exists()


def test_python_api_search_then_compare_and_prune(setup, tmp_path):
    """The README's "Use from Python": the same functions the commands call, no argparse."""
    from agents.config import SearchConfig
    from agents.search import search
    from amc.api import compare, prune
    from amc.spec import PruneSpec

    spec = PruneSpec(model=f"{setup['model']}:factory", weights=str(setup["weights"]), data_dir=str(setup["data"]),
                     reward_set_size=200, calib_batches=2, calib_batch_size=20, fill_budget=True, seed=3)
    best = search(spec, SearchConfig(episodes=4, warmup=2), tmp_path / "run", progress=False)
    rows = compare(tmp_path / "run")["rows"]
    slim, meta = prune(spec, str(tmp_path / "run" / "best_policy.json"))
    assert rows[2]["reward_top1"] == meta["reward_top1"] == best["best_reward_top1"]
    assert meta["flops_ratio"] == best["best_flops_ratio"] <= 0.5
    assert PruneSpec.from_dict(meta["spec"]) == spec
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in spec.build().model.parameters())


def test_fill_budget_is_on_by_default_both_flags_parse_and_old_records_keep_the_papers_wall(capsys):
    """The lower wall became the default; a record written before it existed had the paper's wall."""
    from amc.cli import build_parser
    from amc.cli.common import spec_from
    from amc.spec import PruneSpec

    def spec(*flags: str) -> PruneSpec:
        return spec_from(build_parser().parse_args(["search", "--run", "r", *flags]))

    assert (spec().fill_budget, spec("--fill-budget").fill_budget, spec("--no-fill-budget").fill_budget) == \
        (True, True, False)
    record = PruneSpec().to_dict()
    assert PruneSpec.from_dict(record).fill_budget is True
    del record["fill_budget"]
    assert PruneSpec.from_dict(record).fill_budget is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--help"])
    assert "--fill-budget, --no-fill-budget" in capsys.readouterr().out


def test_departure_options_and_sigma_schedule_reach_the_search(setup, tmp_path, capsys):
    """Every option for the official code's choices runs end to end and is recorded."""
    run = tmp_path / "run"
    extra = ["--action-map", "clip", "--stored-action", "agent", "--last-layer-init", "uniform",
             "--warmup-convention", "official", "--sigma-decay", "auto", "--sigma-min", "0.05", "--bn-recal", "2"]
    assert main(search_args(setup, run, "--episodes", "5", "--warmup", "2", "--quiet", "--json", *extra)) == 0
    capsys.readouterr()
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert (cfg["action_map"], cfg["stored_action"], cfg["last_layer_init"], cfg["warmup_convention"]) == \
        ("clip", "agent", "uniform", "official")
    assert (cfg["sigma_decay"], cfg["sigma_min"], cfg["bn_recal"]) == ("auto", 0.05, 2)
    episodes = read_episodes(run)
    assert len(episodes) == 5 and all(e["flops_ratio"] <= 0.5 for e in episodes)
    # official warm-up: warmup + 1 random episodes, so the actor plays the last two only
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0}).Reload()
    assert [s.step for s in acc.Scalars("train/critic_loss")] == [3, 4]
    sigmas = [s.value for s in acc.Scalars("explore/sigma")]
    assert sigmas[-1] == pytest.approx(0.05)  # auto decay lands on the floor at the last episode


@pytest.mark.parametrize("extra,message", [
    (["--sigma-decay", "auto", "--sigma-min", "0"], "--sigma-decay auto needs a final sigma > 0: --sigma-final or --sigma-min"),
    (["--sigma-final", "0.1"], "--sigma-final goes with --sigma-decay auto"),
    (["--bn-recal", "-1"], "--bn-recal must be >= 0, got -1"),
    (["--episodes", "3", "--warmup", "2", "--warmup-convention", "official"],
     "--episodes (3) must be greater than --warmup (3), or the agent never learns"),
])
def test_bad_departure_options(setup, tmp_path, capsys, extra, message):
    in_process_error(capsys, message, *search_args(setup, tmp_path / "run", "--quiet", *extra))
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_prune_with_bn_recal_carries_the_recalibrated_statistics(setup, tmp_path, capsys):
    """--bn-recal changes the pruned model's BN statistics only; the weights are the same."""
    from amc.pruned import load_pruned

    common = ["prune", "--model", f"{setup['model']}:factory", "--weights", str(setup["weights"]), "--data-dir",
              str(setup["data"]), "--reward-set-size", "200", "--calib-batches", "2", "--calib-batch-size", "20",
              "--policy", "uniform:0.5", "--json"]
    assert main(common + ["--out", str(tmp_path / "plain")]) == 0
    assert main(common + ["--bn-recal", "3", "--out", str(tmp_path / "recal")]) == 0
    capsys.readouterr()
    plain, recal = load_pruned(tmp_path / "plain").state_dict(), load_pruned(tmp_path / "recal").state_dict()
    assert plain.keys() == recal.keys()
    for k in plain:
        same = torch.equal(plain[k], recal[k])
        assert same == (not k.endswith(("running_mean", "running_var", "num_batches_tracked"))), k
    assert json.loads((tmp_path / "recal" / "model.json").read_text())["spec"]["bn_recal"] == 3


def test_bench_correlation_end_to_end(setup, tmp_path, capsys):
    out = tmp_path / "corr"
    assert main(["bench", "correlation", "--model", f"{setup['model']}:factory", "--weights", str(setup["weights"]),
                 "--data-dir", str(setup["data"]), "--reward-set-size", "200", "--calib-batches", "2",
                 "--calib-batch-size", "20", "--policies", "4", "--ft-images", "100", "--bn-counts", "1", "2",
                 "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["policies"] == 5 and res["rows"][0]["name"] == "uniform"
    assert set(res["correlation"]) == {"reward", "bn1", "bn2", "no_reconstruct"}
    assert all(-1 <= c["spearman"] <= 1 for c in res["correlation"].values() if c["spearman"] == c["spearman"])
    assert all(0.45 < r["flops_ratio"] <= 0.5 for r in res["rows"][1:])  # the lower wall fills the budget
    assert (out / "correlation.png").stat().st_size > 1000
    assert json.loads((out / "correlation.json").read_text())["correlation"] == res["correlation"]


def test_bench_selection_rescores_the_top_policies_as_the_search_pruned_them(setup, tmp_path, capsys):
    from amc.api import compare

    run = tmp_path / "r"
    assert main(search_args(setup, run, "--algo", "random", "--episodes", "6", "--seed", "1", "--quiet")) == 0
    out = tmp_path / "sel"
    assert main(["bench", "selection", str(run), "--top", "3", "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (r,) = res["runs"]
    pols = r["policies"]
    assert r["k"] == len(pols) == 3 and r["reproduced"] and r["reward_images"] == 200
    assert [p["reward_top1"] for p in pols] == sorted((p["reward_top1"] for p in pols), reverse=True)
    assert len({tuple(p["kept"]) for p in pols}) == 3
    ref = {row["name"].split("@")[0]: row for row in compare(run)["rows"]}  # the search's pick and uniform, as amc report scores them
    assert pols[0]["test_top1"] == ref["AMC"]["test_top1"] and pols[0]["reward_top1"] == ref["AMC"]["reward_top1"]
    assert r["uniform"] == {k: ref["uniform"][k] for k in ("reward_top1", "test_top1")}
    assert r["chosen_test"] == pols[0]["test_top1"] and 1 <= r["chosen_test_rank"] <= 3
    assert (out / "selection.png").stat().st_size > 1000
    in_process_error(capsys, f"{out} is neither a search run folder (episodes.jsonl) nor a benchmark folder "
                     "({algo}-seed{N} run folders)", "bench", "selection", out, "--out", tmp_path / "s2")
    assert not (tmp_path / "s2").exists()


def test_top_policies_are_distinct_and_keep_their_first_best_episode():
    from agents.selection import standard_error, top_policies

    eps = [{"episode": i, "reward_top1": t, "flops_ratio": 0.5, "kept": k}
           for i, (t, k) in enumerate([(80, [1, 2]), (90, [2, 2]), (90, [2, 2]), (85, [1, 2]), (70, [3, 1])])]
    tops = top_policies(eps, 2)
    assert [(p["episode"], p["reward_top1"], p["kept"]) for p in tops] == [(1, 90, [2, 2]), (3, 85, [1, 2])]
    assert standard_error(90.0, 10000) == pytest.approx(0.3)


def test_rank_correlations_by_hand():
    from amc.correlation import kendall, ranks, spearman

    assert ranks([3, 1, 2, 2]).tolist() == [4.0, 1.0, 2.5, 2.5]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert spearman([1, 1, 1], [1, 2, 3]) != spearman([1, 1, 1], [1, 2, 3])  # constant: nan


def synthetic_latency(pruner, remainder_ms: float = 0.05):
    """A latency table that times nothing: each layer costs cin * cout * its output positions, and
    the 28x28 layers twice that (memory traffic the FLOPs count misses)."""
    from amc.latency_table import LatencyModel

    tables = {}
    for name, li in pruner.graph.layers.items():
        hw = li.in_hw[0] * li.in_hw[1] / li.stride ** 2
        w = 2e-6 * hw * (2.0 if li.in_hw[0] == 28 else 1.0)
        ins, outs = sorted({1, li.cin}), sorted({1, li.cout})
        tables[name] = (ins, outs, [[w * i * o for o in outs] for i in ins])
    return LatencyModel.from_tables(pruner.graph, tables, remainder_ms=remainder_ms,
                                    meta={"runtime": "torch", "batch": 64, "threads": 1, "fingerprint_id": "synthetic"})


def test_latency_budget_search_end_to_end(setup, tmp_path, capsys, monkeypatch):
    """--budget latency: every episode's predicted latency is within the target, the state's resource
    features are in latency units, and the run records the latency target."""
    import amc.spec

    monkeypatch.setattr(amc.spec.PruneSpec, "latency_model", lambda self, pruner, progress=False:
                        synthetic_latency(pruner))
    run = tmp_path / "run"
    assert main(search_args(setup, run, "--budget", "latency", "--target", "0.4", "--fill-budget", "--episodes", "5",
                            "--warmup", "2", "--verify-top", "3", "--quiet", "--json")) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    episodes = read_episodes(run)
    # --verify-top: the 3 best distinct policies timed end to end; the chosen one is the best
    # measured within the target (or the fastest), and amc prune reads its file
    verified = json.loads((run / "verified.json").read_text())
    cands = verified["candidates"]
    assert len(cands) == len({tuple(c["kept"]) for c in cands}) == min(3, len({tuple(e["kept"]) for e in episodes}))
    assert [c["reward"] for c in cands] == sorted((c["reward"] for c in cands), reverse=True)
    assert cands[0]["reward"] == max(e["reward"] for e in episodes) and all(c["measured_ratio"] > 0 for c in cands)
    fitting = [c for c in cands if c["measured_ratio"] <= 0.4]
    chosen = fitting[0] if fitting else min(cands, key=lambda c: c["measured_ratio"])
    assert verified["chosen_episode"] == chosen["episode"] == out["verified"]["chosen_episode"]
    vp = json.loads((run / "verified_policy.json").read_text())
    assert [l["kept"] for l in vp["layers"]] == chosen["kept"] and vp["measured_within_target"] == bool(fitting)
    bias = sorted(c["measured_ratio"] / c["predicted_ratio"] for c in cands)
    assert verified["measured_over_predicted"] == pytest.approx(bias[len(bias) // 2] if len(bias) % 2 else
                                                                (bias[len(bias) // 2 - 1] + bias[len(bias) // 2]) / 2)
    suggested = None if fitting else pytest.approx(0.4 / verified["measured_over_predicted"])
    assert verified["suggested_target"] == suggested
    assert all(e["latency_ratio"] <= 0.4 + 1e-12 for e in episodes)
    assert all(e["latency_ratio"] > 0.3 for e in episodes)  # the lower wall fills the latency budget
    best = json.loads((run / "best_policy.json").read_text())
    assert best["latency_ratio"] <= 0.4 and best["latency_target"]["fingerprint_id"] == "synthetic"
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["budget"] == "latency" and config["latency"]["runtime"] == "torch"
    assert out["best_reward"] == best["reward"]
    assert verified["base_measured_ms"] > 0  # every candidate timed with the one base, in one run

    # a finished search verified again, with another K: only what follows the search changes
    before = (run / "episodes.jsonl").read_text()
    assert main(["search", "--resume", str(run), "--verify-top", "2", "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    verified2 = json.loads((run / "verified.json").read_text())
    assert [c["episode"] for c in verified2["candidates"]] == [c["episode"] for c in cands[:2]]
    assert again["verified"]["chosen_episode"] == verified2["chosen_episode"] and again["best_reward"] == best["reward"]
    assert (run / "episodes.jsonl").read_text() == before
    assert main(["search", "--resume", str(run), "--verify-top", "2"]) == 0
    shown = capsys.readouterr()
    assert "verified end to end: episode" in shown.out and "warning" not in shown.err
    # a table rebuilt since the search (another remainder): said, and the new one is used
    monkeypatch.setattr(amc.spec.PruneSpec, "latency_model", lambda self, pruner, progress=False:
                        synthetic_latency(pruner, remainder_ms=0.06))
    assert main(["search", "--resume", str(run), "--verify-top", "2", "--quiet"]) == 0
    assert "warning: the latency table in the cache is not the one" in capsys.readouterr().err

    # accuracy-guaranteed: -Error * log(latency in us), no wall
    run2 = tmp_path / "run2"
    assert main(search_args(setup, run2, "--reward", "latency", "--algo", "random", "--episodes", "3",
                            "--quiet")) == 0
    capsys.readouterr()
    best = json.loads((run2 / "best_policy.json").read_text())
    assert best["reward"] == pytest.approx((best["reward_top1"] / 100 - 1) * np.log(1000 * best["latency_ms"]))


def test_report_of_a_latency_run_uses_uniform_at_the_latency_budget_and_times_the_models(setup, tmp_path, capsys,
                                                                                          monkeypatch):
    import amc.spec

    monkeypatch.setattr(amc.spec.PruneSpec, "latency_model", lambda self, pruner, progress=False:
                        synthetic_latency(pruner))
    run = tmp_path / "run"
    assert main(search_args(setup, run, "--budget", "latency", "--target", "0.4", "--fill-budget", "--algo", "random",
                            "--episodes", "3", "--quiet")) == 0
    capsys.readouterr()
    assert main(["report", "--run", str(run), "--repeats", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    base, uniform, amc_row = out["rows"]
    best = json.loads((run / "best_policy.json").read_text())
    assert out["budget"] == "latency" and out["latency"]["fingerprint_id"] == "synthetic"
    assert base["predicted_latency_ratio"] == 1.0 and base["measured_latency_ratio"] == 1.0
    # uniform is the largest uniform ratio within the latency budget, not the FLOPs one
    assert 0.3 < uniform["predicted_latency_ratio"] <= 0.4
    assert amc_row["predicted_latency_ratio"] == pytest.approx(best["latency_ratio"])
    assert all(r["measured_ms"] > 0 for r in out["rows"])
    # a policy --verify-top kept in place of the best one is a fourth row, timed in the same run
    from amc.api import read_run
    from amc.policy import write_policy

    problem = read_run(run).spec.build(calibrate=False)
    other = problem.pruner.uniform_counts(0.3, 1)
    write_policy(run / "verified_policy.json", problem.pruner, other)
    assert main(["report", "--run", str(run), "--repeats", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    assert [r["name"] for r in rows][2:] == ["AMC", "AMC verified"] and rows[3]["measured_latency_ratio"] > 0
    assert rows[3]["flops"] == problem.pruner.flops(other)
    # a FLOPs run reports latency only when asked, and then builds the table of its spec's target
    run2 = tmp_path / "run2"
    assert main(search_args(setup, run2, "--algo", "random", "--episodes", "2", "--quiet")) == 0
    capsys.readouterr()
    assert main(["report", "--run", str(run2), "--json"]) == 0
    assert "measured_latency_ratio" not in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"][0]
    assert main(["report", "--run", str(run2), "--latency", "--repeats", "2"]) == 0
    text = capsys.readouterr().out
    assert "latency pred." in text and "latency: torch, batch 64, 1 thread(s)" in text


def test_verify_top_needs_a_latency_budget(setup, tmp_path, capsys):
    in_process_error(capsys, "--verify-top times policies against a latency target: it needs a search under "
                             "--budget latency",
                     *search_args(setup, tmp_path / "run", "--verify-top", "2", "--episodes", "2", "--warmup", "1"))
    assert not (tmp_path / "run").exists()
    assert main(search_args(setup, tmp_path / "flops", "--algo", "random", "--episodes", "2", "--quiet")) == 0
    capsys.readouterr()
    in_process_error(capsys, "--verify-top times policies against a latency target: it needs a search under "
                             "--budget latency", "search", "--resume", str(tmp_path / "flops"), "--verify-top", "2")
    in_process_error(capsys, "--verify-top must be >= 0, got -1",
                     "search", "--resume", str(tmp_path / "flops"), "--verify-top", "-1")


def test_latency_target_below_the_reachable_minimum_is_refused(setup, tmp_path, capsys, monkeypatch):
    import amc.spec

    monkeypatch.setattr(amc.spec.PruneSpec, "latency_model", lambda self, pruner, progress=False:
                        synthetic_latency(pruner))
    message = in_process_error(capsys, None, *search_args(setup, tmp_path / "run", "--budget", "latency",
                                                          "--target", "0.01", "--quiet"))
    assert message.startswith("budget 0.010 is unreachable: with every prunable layer at the lower bound 0.2 "
                              "the model keeps 0.") and message.endswith("of its latency")


def test_latency_command_builds_then_loads_its_table_and_bench_compares(setup, tmp_path, capsys):
    """amc latency on a tiny model (batch 2: fast), then from the cache; amc bench latency end to end."""
    model = ["--model", f"{setup['model']}:factory", "--weights", str(setup["weights"]), "--data-dir",
             str(setup["data"]), "--reward-set-size", "200", "--latency-batch", "2", "--cache-dir", str(tmp_path / "c")]
    assert main(["latency", *model, "--json"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not first["from_cache"] and first["predicted_ms"] > 0 and first["batch"] == 2
    tabled = [r for r in first["layers"] if r["ms"] is not None]
    assert len(tabled) == 4 and sum(r["flops_share"] for r in first["layers"]) == pytest.approx(1.0)
    assert sum(r["latency_share"] for r in tabled) + first["remainder_share"] == pytest.approx(1.0)
    assert first["fit"]["tables_scale"] > 0 and first["fit"]["weights_ms_per_mib"] >= 0
    assert first["fit"]["weights_full_mib"] > 0
    assert main(["latency", *model, "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["from_cache"] and again["predicted_ms"] == first["predicted_ms"]

    assert main(["bench", "latency", *model, "--policies", "2", "--repeats", "2", "--out", str(tmp_path / "b"),
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(res["policies"]) == 3 and {"median_abs_rel_err", "p90_abs_rel_err", "max_abs_rel_err"} <= res.keys()
    assert res["table_from_cache"] and (tmp_path / "b" / "latency.png").stat().st_size > 1000

    # a searched policy beside every uniform model: the nearest in measured latency is written out
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps([0.5, 1.0, 0.25]))
    assert main(["bench", "latency", *model, "--policies", "0", "--repeats", "2", "--policy", str(policy),
                 "--uniform-ladder", "--out", str(tmp_path / "m"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["policy"]: r for r in res["policies"]}
    ladder = [r for name, r in rows.items() if name.startswith("uniform-")]
    assert "policy" in rows and len(ladder) >= 2 and len({tuple(r["counts"]) for r in ladder}) == len(ladder)
    near = json.loads((tmp_path / "m" / "nearest_uniform.json").read_text())
    assert near["label"] == res["nearest_uniform"]["policy"]
    # decided in a run-off of the policy and the nearest few by the first timings
    runoff = res["nearest_uniform"]["runoff"]
    first = sorted(ladder, key=lambda r: abs(r["measured_ratio"] - rows["policy"]["measured_ratio"]))
    assert set(runoff) == {"policy", *(r["policy"] for r in first[:3])} and near["label"] in runoff
    assert res["nearest_uniform"]["measured_ratio"] == runoff[near["label"]]
    gap = abs(runoff[near["label"]] - runoff["policy"])
    assert all(gap <= abs(r - runoff["policy"]) for n, r in runoff.items() if n != "policy")
    assert [l["kept"] for l in near["layers"]] == rows[near["label"]]["counts"]

    # each group cut alone, measured against predicted: one row per group, and a picture
    assert main(["bench", "latency", *model, "--policies", "0", "--repeats", "2", "--per-group",
                 "--out", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "g" / "latency.json").read_text())
    assert len(res["per_group"]["groups"]) == 3 and "each group alone at 0.5" in out
    assert (tmp_path / "g" / "groups.png").stat().st_size > 1000

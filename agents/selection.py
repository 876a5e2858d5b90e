"""Does the reward set pick the best policy a search found? Its top K, re-scored on the test set.

A search keeps the policy with the best reward-set top-1 out of hundreds. Late in a search many
policies score within a few tenths of a point of each other, less than one evaluation's
sampling error on a reward set of a few thousand images, so the one kept may owe its place to
the reward set's particular images: it then scores lower on the test set than its reward says
(the winner's curse). This module measures that for finished searches: each search's K best
distinct policies (by their logged reward) are pruned exactly as the search pruned them, scored
on the test set, and the two orders compared. The test set is only read, never used to choose.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

from agents.run_folder import read_episodes
from amc.checkpoint import atomic_write_png
from amc.errors import AmcError

_SEED_RUN = re.compile(r"^[a-z0-9]+-seed\d+$")


def run_folders(paths: Sequence[str | Path]) -> list[Path]:
    """Search run folders: each path is one (it has episodes.jsonl) or a benchmark folder of them."""
    out: list[Path] = []
    for path in map(Path, paths):
        if (path / "episodes.jsonl").is_file():
            out.append(path)
            continue
        runs = sorted(p for p in path.iterdir() if p.is_dir() and _SEED_RUN.match(p.name)
                      and (p / "episodes.jsonl").is_file()) if path.is_dir() else []
        if not runs:
            raise AmcError(f"{path} is neither a search run folder (episodes.jsonl) nor a benchmark folder "
                           "({algo}-seed{N} run folders)")
        out += runs
    return out


def top_policies(episodes: Sequence[dict], k: int) -> list[dict]:
    """The ``k`` best distinct policies (kept channels) by reward-set top-1, each at its first best episode."""
    best: dict[tuple[int, ...], dict] = {}
    for e in episodes:
        key = tuple(int(c) for c in e["kept"])
        if key not in best or e["reward_top1"] > best[key]["reward_top1"]:
            best[key] = {"episode": int(e["episode"]), "reward_top1": float(e["reward_top1"]),
                         "flops_ratio": float(e["flops_ratio"]), "kept": list(key)}
    return sorted(best.values(), key=lambda p: (-p["reward_top1"], p["episode"]))[:k]


def standard_error(top1: float, images: int) -> float:
    """One evaluation's sampling error, in points: the binomial standard error of a top-1 on ``images``."""
    p = top1 / 100.0
    return 100.0 * math.sqrt(p * (1.0 - p) / images)


def check_run(run: str | Path, k: int, device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """Re-score a finished search's ``k`` best distinct policies on the test set, and uniform beside them.

    The first (the search's best) is also re-scored on the reward set, and ``reproduced`` says
    whether that gave the logged figure, i.e. whether the spec read back prunes as the search did.
    """
    from amc.api import read_run
    from amc.correlation import kendall, spearman
    from amc.train import evaluate, resolve_device

    dev = resolve_device(device)
    rec = read_run(run)
    episodes = read_episodes(Path(run))
    if not episodes:
        raise AmcError(f"{run} has no finished episode yet")
    tops = top_policies(episodes, k)
    problem = rec.spec.build(progress=progress)
    splits, spec = problem.splits, rec.spec
    uniform_net = problem.prune(problem.pruner.uniform_counts(rec.target, spec.channel_round, spec.budget)).to(dev)
    uniform = {"reward_top1": evaluate(uniform_net, splits.reward, dev), "test_top1": evaluate(uniform_net, splits.test, dev)}
    for i, p in enumerate(tops):
        net = problem.prune(p["kept"]).to(dev)
        if i == 0:
            p["reward_top1_again"] = evaluate(net, splits.reward, dev)
        p["test_top1"] = evaluate(net, splits.test, dev)
        if progress:
            print(f"{Path(run).name}: policy {i + 1} of {len(tops)} (episode {p['episode']}): reward "
                  f"{p['reward_top1']:.2f}%, test {p['test_top1']:.2f}%", flush=True)
    reward = [p["reward_top1"] for p in tops]
    test = [p["test_top1"] for p in tops]
    chosen_rank = 1 + sum(t > test[0] for t in test)  # 1: the reward set's pick is also the test set's best
    return {"run": str(run), "episodes": len(episodes), "k": len(tops), "reward_images": len(splits.reward),
            "test_images": len(splits.test),
            "reward_se": standard_error(reward[0], len(splits.reward)),
            "reproduced": abs(tops[0]["reward_top1_again"] - reward[0]) < 1e-6,
            "reward_span": max(reward) - min(reward), "test_span": max(test) - min(test),
            "spearman": spearman(reward, test), "kendall": kendall(reward, test),
            "chosen_test": test[0], "chosen_test_rank": chosen_rank, "top_test_mean": sum(test) / len(test),
            "top_test_max": max(test), "top_above_uniform_test": sum(t > uniform["test_top1"] for t in test),
            "uniform": uniform, "policies": tops}


def plot_selection(results: Sequence[dict], path: str | Path) -> None:
    """One panel per run: reward-set vs test top-1 of its top K, the search's pick circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, r in zip(axes.flat, results):
        reward = [p["reward_top1"] for p in r["policies"]]
        test = [p["test_top1"] for p in r["policies"]]
        ax.scatter(reward, test, s=14, alpha=0.7)
        ax.scatter(reward[:1], test[:1], s=90, facecolors="none", edgecolors="red", label="kept by the search")
        ax.axhline(r["uniform"]["test_top1"], color="grey", ls="--", lw=1, label="uniform (test)")
        ax.axvline(r["uniform"]["reward_top1"], color="grey", ls=":", lw=1, label="uniform (reward set)")
        ax.set_title(f"{Path(r['run']).parent.name}/{Path(r['run']).name}\nrho {r['spearman']:.2f}", fontsize=9)
        ax.set_xlabel("reward-set top-1 (%)")
        ax.set_ylabel("test top-1 (%)")
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    atomic_write_png(path, fig, dpi=110)
    plt.close(fig)

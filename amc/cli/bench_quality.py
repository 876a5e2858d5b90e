"""``amc bench quality``: uniform vs. random search vs. DDPG, over seeds, without fine-tuning.

For each algorithm and seed it runs a search (the same episode budget for all), then
:func:`amc.cli.report.compare` prunes with the uniform policy and the search's best policy
by one pruner. Reward-set accuracy decides; test accuracy is reported beside it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from amc.cli.common import add_common, add_model_args, emit, fresh_out_dir, setup_threads
from amc.errors import AmcError


def register(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser("quality", help="uniform vs. random search vs. DDPG over seeds (no fine-tuning)",
                        description="Runs amc search for each --algos x --seeds with the same episode budget, "
                                    "then reports reward-set and test top-1 of uniform, each algorithm's best "
                                    "policy, their mean over seeds, and the share of uniform's loss recovered.")
    add_model_args(p)
    add_common(p)
    p.add_argument("--dataset", default="fashion-mnist", help="dataset (default fashion-mnist)")
    p.add_argument("--data-dir", default=None, help="where the data lies")
    p.add_argument("--reward-set-size", type=int, default=5000, help="reward-set images (default 5000)")
    p.add_argument("--calib-batches", type=int, default=60, help="calibration batches (default 60)")
    p.add_argument("--calib-batch-size", type=int, default=50, help="images per calibration batch (default 50)")
    p.add_argument("--target-flops", type=float, default=0.5, help="FLOPs budget (default 0.5)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search seeds (default 0 1 2)")
    p.add_argument("--algos", nargs="+", default=["random", "ddpg"], choices=["random", "ddpg", "td3", "sac"],
                   help="algorithms compared (default random ddpg)")
    p.add_argument("--episodes", type=int, default=400, help="episodes per search (default 400)")
    p.add_argument("--warmup", type=int, default=100, help="warm-up episodes of the learners (default 100)")
    p.add_argument("--fill-budget", action="store_true", help="the searches use the lower action wall too")
    p.add_argument("--jobs", type=int, default=1,
                   help="searches run at once, each in its own process (default 1); with --threads, "
                        "each process gets that many threads")
    p.add_argument("--resume", action="store_true",
                   help="continue in an existing --out: finished searches are only reported, stopped ones resumed")
    p.add_argument("--out", required=True, help="folder for the run folders and summary.json")
    p.set_defaults(func=run)


def _search_job(cfg, run_dir: str, resume: bool, progress: bool) -> dict:
    """One search, in this process or a worker's; an existing run folder is resumed (a finished
    one is only reported), so a stopped benchmark continues where it was. The search sets its
    own thread count from ``cfg.threads``."""
    from agents.search import resume_search, run_search

    if resume and (Path(run_dir) / "config.json").is_file():
        return resume_search(run_dir, progress=progress)
    return run_search(cfg, run_dir, progress=progress)


def run(args: argparse.Namespace) -> int:
    from agents.search import SearchConfig
    from amc.cli.report import compare

    setup_threads(args)
    if not args.seeds:
        raise AmcError("--seeds needs at least one seed")
    if args.jobs < 1:
        raise AmcError(f"--jobs must be >= 1, got {args.jobs}")
    if args.resume:
        out = Path(args.out)
        if not out.is_dir():
            raise AmcError(f"--resume: {out} is not a folder of amc bench quality")
    else:
        out = fresh_out_dir(args.out)
    jobs = []
    for seed in args.seeds:
        for algo in args.algos:
            cfg = SearchConfig(model=args.model, weights=args.weights, width=args.width, dataset=args.dataset,
                               data_dir=args.data_dir, reward_set_size=args.reward_set_size,
                               calib_batches=args.calib_batches, calib_batch_size=args.calib_batch_size,
                               target=args.target_flops, fill_budget=args.fill_budget, algo=algo, seed=seed,
                               episodes=args.episodes, warmup=args.warmup if algo != "random" else 0,
                               device=args.device, threads=args.threads)
            cfg.validate()  # every bad setting is refused before the first search starts
            jobs.append((seed, algo, cfg, str(out / f"{algo}-seed{seed}")))
    t0 = time.perf_counter()
    searches: dict[tuple[int, str], dict] = {}
    if args.jobs == 1:
        for seed, algo, cfg, run_dir in jobs:
            print(f"[{time.perf_counter() - t0:7.0f}s] search {algo} seed {seed} -> {run_dir}", file=sys.stderr)
            searches[seed, algo] = _search_job(cfg, run_dir, args.resume, not args.json)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a forked torch (or CUDA) runtime is not safe to use in the children
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {(seed, algo): pool.submit(_search_job, cfg, run_dir, args.resume, False)
                       for seed, algo, cfg, run_dir in jobs}
            for (seed, algo), fut in futures.items():
                searches[seed, algo] = fut.result()
                print(f"[{time.perf_counter() - t0:7.0f}s] search {algo} seed {seed} done", file=sys.stderr)
    results: dict[str, list[dict]] = {a: [] for a in args.algos}
    uniform: list[dict] = []
    base = None
    for seed, algo, _, run_dir in jobs:
        search = searches[seed, algo]
        rep = compare(run_dir, device=args.device)
        base_row, uniform_row, amc_row = rep["rows"]
        base = base_row
        if algo == args.algos[0]:
            uniform.append(uniform_row)  # the uniform row depends on the calibration seed only
        results[algo].append({"seed": seed, **amc_row, "best_episode": search["best_episode"],
                              "seconds": search["seconds"]})
    summary = {"model": args.model, "dataset": args.dataset, "target": args.target_flops, "episodes": args.episodes,
               "fill_budget": args.fill_budget, "jobs": args.jobs,
               "warmup": args.warmup, "seeds": args.seeds, "base": base, "uniform": uniform, "runs": results,
               "seconds": round(time.perf_counter() - t0, 1), "command": "amc " + " ".join(args._argv)}

    def mean(rows: list[dict], key: str) -> float:
        return statistics.fmean(r[key] for r in rows)

    lost = base["reward_top1"] - mean(uniform, "reward_top1")
    summary["mean"] = {"uniform": {k: mean(uniform, k) for k in ("reward_top1", "test_top1", "flops_ratio")}}
    for algo, rows in results.items():
        summary["mean"][algo] = {k: mean(rows, k) for k in ("reward_top1", "test_top1", "flops_ratio")}
        summary["mean"][algo]["recovered"] = ((summary["mean"][algo]["reward_top1"] - mean(uniform, "reward_top1"))
                                              / lost if lost > 0 else float("nan"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"{args.model}, {args.target_flops:g} FLOPs, {args.episodes} episodes, seeds {args.seeds}, no fine-tuning",
             f"{'':10} {'reward top-1':>14} {'test top-1':>12} {'recovered':>10}",
             f"{'base':10} {base['reward_top1']:13.2f}% {base['test_top1']:11.2f}%",
             f"{'uniform':10} {summary['mean']['uniform']['reward_top1']:13.2f}% "
             f"{summary['mean']['uniform']['test_top1']:11.2f}%"]
    for algo in args.algos:
        m = summary["mean"][algo]
        lines.append(f"{algo:10} {m['reward_top1']:13.2f}% {m['test_top1']:11.2f}% {100 * m['recovered']:9.0f}%")
    emit(summary, args.json, "\n".join(lines))
    return 0

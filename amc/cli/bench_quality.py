"""``amc bench quality``: uniform vs. random search vs. DDPG, over seeds, without fine-tuning.

For each algorithm and seed it runs a search (the same episode budget for all), as local
processes (`amc sweep` runs them on Ray), then
:func:`amc.api.compare` prunes with the uniform policy and the search's best policy by one
pruner. Reward-set accuracy decides; the test set is the headline, so "recovered" (the share
of uniform's loss won back) is given on both, per seed and as mean +- std. Evaluations are
kept in ``OUT/evaluations.json``: a rerun with ``--resume`` redoes none of them.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from agents.config import AGENT, SEARCH, SearchConfig
from agents.quality import algo_config, check_same_search, summarize, summary_table
from amc.cli.common import (absolute, add_common, add_spec, emit, fresh_out_dir, out_or_resume, setup_threads,
                            spec_from)
from amc.errors import AmcError
from amc.options import add_options, bounded, seed_int, values_given
from amc.runlock import FolderLock
from amc.spec import BUDGET, DATA, LATENCY, MODEL, PRUNER


def register(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser("quality", help="uniform vs. random search vs. DDPG over seeds (no fine-tuning)",
                        description="Runs a search for each --algos x --seeds with the same episode budget and "
                                    "the same spec, then reports reward-set and test top-1 of uniform, each "
                                    "algorithm's best policy, their mean over seeds, and the share of uniform's "
                                    "loss recovered. --seed is replaced by each of --seeds.")
    add_study_options(p)
    p.add_argument("--jobs", type=bounded(int, "--jobs", 1), default=1,
                   help="searches run at once, each in its own process (default 1); with --threads, "
                        "each process gets that many threads")
    p.add_argument("--resume", action="store_true",
                   help="continue in an existing --out: finished searches are only reported, stopped ones resumed")
    p.add_argument("--out", required=True, help="folder for the run folders and summary.json")
    p.set_defaults(func=run)


def add_study_options(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """What a study of searches shares with amc search (every option but the seed, which
    --seeds replaces), plus --seeds and --algos; also used by amc sweep."""
    add_spec(p, MODEL, DATA, PRUNER, BUDGET, LATENCY, skip=("seed", *skip))
    add_common(p)
    add_options(p, SearchConfig, [SEARCH], skip=("algo", "save_every"))
    add_options(p.add_argument_group("agent (AMC's DDPG settings by default)"), SearchConfig, [AGENT])
    p.add_argument("--seeds", type=seed_int, nargs="+", default=[0, 1, 2], help="search seeds (default 0 1 2)")
    p.add_argument("--algos", nargs="+", default=["random", "ddpg"], choices=["random", "ddpg", "td3", "sac"],
                   help="algorithms compared (default random ddpg)")


_STOP = False  # a worker process was told to stop: it starts no further search
_BUSY = False  # a worker process is inside a job (not waiting for one)


def _worker_init() -> None:
    """A worker of ``--jobs``: Ctrl-C stops the search it runs (which saves its state) and
    every search still queued for it; a worker waiting for work just notes it, no traceback."""
    def handler(signum: int, frame: object) -> None:
        global _STOP
        _STOP = True
        if _BUSY:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _search_job(spec, cfg, run_dir: str, resume: bool, progress: bool) -> dict:
    """One search; an existing run folder is resumed (a finished one is only reported), so a
    stopped benchmark continues where it was. The search sets its own thread count from
    ``cfg.threads``."""
    from agents.search import resume_search, search

    if resume and (Path(run_dir) / "config.json").is_file():
        return resume_search(run_dir, progress=progress)
    return search(spec, cfg, run_dir, progress=progress)


def _worker_job(spec, cfg, run_dir: str, resume: bool) -> dict | None:
    """:func:`_search_job` in a worker process of ``--jobs``; None: not started, the benchmark is stopping."""
    global _STOP, _BUSY

    if _STOP:
        return None
    _BUSY = True
    try:
        return _search_job(spec, cfg, run_dir, resume, False)
    except KeyboardInterrupt:  # a SearchInterrupted too: its state is saved
        _STOP = True
        raise
    finally:
        _BUSY = False


def run(args: argparse.Namespace) -> int:
    setup_threads(args)
    if args.jobs < 1:
        raise AmcError(f"--jobs must be >= 1, got {args.jobs}")
    spec = spec_from(args)
    spec = spec.replace(weights=absolute(spec.weights), data_dir=absolute(spec.data_dir))
    base_cfg = SearchConfig(**values_given(args, SearchConfig), device=args.device, threads=args.threads)
    jobs = []
    for seed in args.seeds:
        for algo in args.algos:
            cfg = algo_config(base_cfg, algo)
            jobs.append((seed, algo, spec.replace(seed=seed), cfg, str(Path(args.out) / f"{algo}-seed{seed}")))
    out = out_or_resume(args.out, args.resume, "amc bench quality")
    with FolderLock(out):  # one benchmark per folder (each search also locks its own run folder)
        if not args.resume:
            fresh_out_dir(args.out)  # again, locked: no other benchmark began here meanwhile
        else:
            _check_summary(out)
            for _, _, seed_spec, cfg, run_dir in jobs:
                check_same_search(seed_spec, cfg, Path(run_dir))
        try:
            return _run(args, spec, base_cfg, jobs, out)
        except KeyboardInterrupt as stop:
            signum = getattr(stop, "signum", signal.SIGINT)
            sys.stderr.write(f"stopped by {signal.Signals(signum).name}; finished searches and the saved states of "
                             f"stopped ones are in {out}; continue with the same command and --resume\n")
            return 128 + signum


def _check_summary(out: Path) -> None:
    """A summary.json that does not parse (cut off by a crash) is replaced at the end: say so."""
    path = out / "summary.json"
    if path.is_file():
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            sys.stderr.write(f"warning: {path} is torn ({getattr(e, 'msg', e)}); it is written again at the end\n")


class _Terminated(KeyboardInterrupt):
    signum = signal.SIGTERM


def _run_parallel(args: argparse.Namespace, jobs: list, t0: float) -> dict[tuple[int, str], dict]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    def on_term(signum: int, frame: object) -> None:
        raise _Terminated

    searches: dict[tuple[int, str], dict] = {}
    previous = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() \
        else None
    # spawn: a forked torch (or CUDA) runtime is not safe to use in the children
    pool = ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init)
    try:
        futures = {(seed, algo): pool.submit(_worker_job, seed_spec, cfg, run_dir, args.resume)
                   for seed, algo, seed_spec, cfg, run_dir in jobs}
        for (seed, algo), fut in futures.items():
            searches[seed, algo] = fut.result()
            if searches[seed, algo] is None:  # its worker was stopped by a signal of its own
                raise KeyboardInterrupt
            print(f"[{time.perf_counter() - t0:7.0f}s] search {algo} seed {seed} done", file=sys.stderr)
    except KeyboardInterrupt:
        # stop the running searches (each saves its state) and start no other; then wait for them
        for proc in list(getattr(pool, "_processes", {}).values()):
            try:
                os.kill(proc.pid, signal.SIGINT)
            except OSError:
                pass
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return searches


def _run(args: argparse.Namespace, spec, base_cfg: SearchConfig, jobs: list, out: Path) -> int:
    t0 = time.perf_counter()
    searches: dict[tuple[int, str], dict] = {}
    if args.jobs == 1:
        for seed, algo, seed_spec, cfg, run_dir in jobs:
            print(f"[{time.perf_counter() - t0:7.0f}s] search {algo} seed {seed} -> {run_dir}", file=sys.stderr)
            searches[seed, algo] = _search_job(seed_spec, cfg, run_dir, args.resume, not args.json)
    else:
        searches = _run_parallel(args, jobs, t0)
    summary = summarize(spec, base_cfg, args.seeds, args.algos,
                        [(seed, algo, seed_spec, run_dir) for seed, algo, seed_spec, _, run_dir in jobs], searches,
                        out, args.device, not args.json,
                        {"jobs": args.jobs, "seconds": round(time.perf_counter() - t0, 1),
                         "command": "amc " + " ".join(args._argv)})
    emit(summary, args.json, summary_table(summary))
    return 0

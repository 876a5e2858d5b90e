"""``amc sweep``: many searches (models x targets x algorithms x seeds) as Ray tasks, then the
summary of ``amc bench quality`` per model and target."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from amc.cli.common import absolute, emit, fresh_out_dir, out_or_resume, setup_threads, spec_from
from amc.errors import AmcError
from amc.options import bounded, values_given


def register(sub: argparse._SubParsersAction) -> None:
    from amc.cli.bench_quality import add_study_options

    p = sub.add_parser("sweep", help="many searches as Ray tasks, on this machine or a cluster",
                       description="Runs one amc search per --models x --targets x --algos x --seeds as a Ray "
                                   "task (the search's Python API, not a subprocess), each in "
                                   "OUT/{model}-t{target}/{algo}-seed{seed}, then writes amc bench quality's "
                                   "summary.json in each {model}-t{target} folder and OUT/summary.json. Without "
                                   "--address it starts a local Ray; with one it joins that cluster. A task whose "
                                   "worker dies is retried and resumes its search. Needs Ray: pip install "
                                   "'amc[scale]'. The other options are amc search's, shared by every trial.")
    add_study_options(p, skip=("model", "target"))
    p.add_argument("--models", nargs="+", required=True, help="models to prune (zoo names, tv:NAME or file.py:factory)")
    p.add_argument("--targets", type=bounded(float, "--targets", 0, 1, lo_open=True), nargs="+", default=[0.5],
                   help="budgets: the share of the resource to keep (default 0.5)")
    p.add_argument("--address", default=None,
                   help="a Ray cluster to join: auto or HOST:PORT (default: start a local Ray)")
    p.add_argument("--cpus", type=bounded(int, "--cpus", 1), default=None,
                   help="CPUs of the local Ray (default: all); not with --address")
    p.add_argument("--cpus-per-trial", type=bounded(int, "--cpus-per-trial", 1), default=1,
                   help="CPUs (and torch threads) each search reserves (default 1)")
    p.add_argument("--gpus-per-trial", type=bounded(float, "--gpus-per-trial", 0), default=0,
                   help="GPUs each search reserves; 0.25 puts four on one GPU (default 0; with --device cuda)")
    p.add_argument("--resume", action="store_true", help="continue in an existing --out: finished trials are "
                                                         "only reported, stopped ones resumed; a trial folder "
                                                         "searched with other settings is refused")
    p.add_argument("--out", required=True, help="folder for the trials and the summaries")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from agents.config import SearchConfig
    from agents.quality import check_same_search
    from agents.sweep import INSTALL_HINT, plan, run_trials, summarize_groups
    from amc.checkpoint import atomic_write_json
    from amc.runlock import FolderLock

    setup_threads(args)
    if args.cpus is not None and args.address:
        raise AmcError("--cpus sizes a local Ray; a cluster given by --address has its own")
    if args.gpus_per_trial > 0 and args.device == "cpu":
        raise AmcError("--gpus-per-trial needs --device cuda (or auto)")
    if importlib.util.find_spec("ray") is None:
        raise AmcError(INSTALL_HINT)
    spec = spec_from(args, model=args.models[0], target=args.targets[0])
    spec = spec.replace(weights=absolute(spec.weights), data_dir=absolute(spec.data_dir))
    cfg = SearchConfig(**values_given(args, SearchConfig), device=args.device)
    trials = plan(spec, cfg, args.models, args.targets, args.algos, args.seeds, Path(args.out).resolve(),
                  args.cpus_per_trial)
    out = out_or_resume(args.out, args.resume, "amc sweep")
    with FolderLock(out):  # one sweep per folder (each search also locks its own run folder)
        if not args.resume:
            fresh_out_dir(args.out)  # again, locked: no other sweep began here meanwhile
        else:  # a trial folder searched with other settings would be summarised under these
            for t in trials:
                check_same_search(t.spec, t.cfg, Path(t.run_dir))
        t0 = time.perf_counter()
        results = run_trials(trials, args.address, args.cpus, args.cpus_per_trial, args.gpus_per_trial,
                             log=(lambda m: None) if args.json else _log)
        trials_wall = time.perf_counter() - t0
        summaries = summarize_groups(trials, results, out.resolve(), args.device, not args.json,
                                     {"command": "amc " + " ".join(getattr(args, "_argv", []))})
        summary = {"groups": summaries, "trials": len(trials), "address": args.address,
                   "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
                   "trials_wall_seconds": round(trials_wall, 1), "wall_seconds": round(time.perf_counter() - t0, 1),
                   "search_seconds": round(sum(r["seconds"] for r in results.values()), 1)}
        atomic_write_json(out / "summary.json", summary)
    from agents.quality import summary_table

    emit(summary, args.json, "\n\n".join(summary_table(s) for s in summaries))
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr)

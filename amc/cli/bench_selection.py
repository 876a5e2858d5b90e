"""``amc bench selection``: does the reward set pick a search's best policy? (:mod:`agents.selection`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from amc.cli.common import add_common, emit, setup_threads
from amc.options import bounded


def register(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser("selection", help="re-score each search's top K policies on the test set",
                        description="For each finished search (a run folder, or a benchmark folder of "
                                    "{algo}-seed{N} run folders): its --top best distinct policies by logged "
                                    "reward-set top-1 are pruned exactly as the search pruned them and scored on the "
                                    "test set, with uniform at the search's budget beside them. Reports the rank correlation of the two sets over those policies, "
                                    "where the search's pick ranks on the test set, and one evaluation's sampling "
                                    "error on the reward set: whether the reward set can still tell the top "
                                    "policies apart. Nothing is chosen on the test set. Writes OUT/selection.json "
                                    "and OUT/selection.png (one scatter per search).")
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="run folders or benchmark folders")
    p.add_argument("--top", type=bounded(int, "--top", 2), default=20,
                   help="distinct policies re-scored per search (default 20)")
    p.add_argument("--out", required=True, help="folder for selection.json and selection.png")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agents.selection import check_run, plot_selection, run_folders
    from amc.checkpoint import atomic_write_json
    from amc.cli.common import fresh_out_dir
    from amc.train import resolve_device

    setup_threads(args)
    resolve_device(args.device)
    runs = run_folders(args.folders)  # a bad folder fails before anything is written
    out = fresh_out_dir(args.out)
    results = [check_run(r, args.top, args.device, progress=not args.json) for r in runs]
    res = {"top": args.top, "runs": results, "command": "amc " + " ".join(args._argv)}
    atomic_write_json(out / "selection.json", res)
    plot_selection(results, out / "selection.png")
    lines = [f"{'search':40} {'K':>3} {'reward span':>11} {'1 eval SE':>9} {'test span':>9} {'spearman':>8} "
             f"{'pick: test (rank)':>18} {'top-K test mean':>15} {'uniform test':>12} {'above it':>8}"]
    for r in results:
        name = f"{Path(r['run']).parent.name}/{Path(r['run']).name}"
        lines.append(f"{name:40} {r['k']:3d} {r['reward_span']:10.2f}  {r['reward_se']:8.2f}  {r['test_span']:8.2f}  "
                     f"{r['spearman']:8.2f} {r['chosen_test']:11.2f} ({r['chosen_test_rank']:2d}) "
                     f"{r['top_test_mean']:14.2f} {r['uniform']['test_top1']:12.2f} {r['top_above_uniform_test']:5d}/{r['k']}"
                     + ("" if r["reproduced"] else "  (logged reward NOT reproduced)"))
    lines.append(f"wrote {out}/selection.json and selection.png")
    emit(res, args.json, "\n".join(lines))
    return 0

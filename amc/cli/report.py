"""``amc report``: the results table of a search run: base, uniform and AMC, side by side.

Reward-set and test top-1, FLOPs and params of the unpruned model, of the uniform policy at
the search's budget, and of the search's best policy, all pruned by one pruner (same
calibration, same reconstruction; :func:`amc.api.compare`). This is a final report: the test
set is read here, after the search chose its policy on the reward set.
"""
from __future__ import annotations

import argparse

from amc.cli.common import add_common, emit, setup_threads


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="results table of a search: base vs. uniform vs. AMC",
                       description="Prune with the uniform policy at the search's budget and with the search's "
                                   "best policy, then report reward-set and test top-1, FLOPs and params next to "
                                   "the unpruned model (no fine-tuning).")
    p.add_argument("--run", required=True, help="an amc search run folder")
    p.add_argument("--policy", default=None, help="a policy file instead of RUN/best_policy.json")
    p.add_argument("--data-dir", default=None, help="where the data lies, if not where the search found it")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc.api import compare

    setup_threads(args)
    res = compare(args.run, args.policy, args.data_dir, args.device, progress=not args.json)
    lines = [f"{res['model']} on {res['dataset']}, {res['layers']} prunable layers, no fine-tuning "
             f"(reconstruction {'on' if res['reconstruct'] else 'off'})",
             f"{'':14} {'reward top-1':>12} {'test top-1':>10} {'MFLOPs':>8} {'FLOPs':>6} {'params':>9} {'params':>6}"]
    for r in res["rows"]:
        lines.append(f"{r['name']:14} {r['reward_top1']:11.2f}% {r['test_top1']:9.2f}% {r['flops'] / 1e6:8.2f} "
                     f"{r['flops_ratio']:6.3f} {r['params']:9d} {r['params_ratio']:6.3f}")
    emit(res, args.json, "\n".join(lines))
    return 0

"""``amc report``: the results table of a search run: base, uniform and AMC, side by side.

Reward-set and test top-1, FLOPs and params of the unpruned model, of the uniform policy at
the search's budget, and of the search's best policy, all pruned by one pruner (same
calibration, same reconstruction). This is a final report: the test set is read here, after
the search chose its policy on the reward set.
"""
from __future__ import annotations

import argparse
import copy
import sys

from amc.cli.common import add_common, emit, setup_threads
from amc.errors import AmcError


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
    setup_threads(args)
    res = compare(args.run, args.policy, args.data_dir, args.device, progress=not args.json)
    rows = res["rows"]
    lines = [f"{res['model']} on {res['dataset']}, {res['layers']} prunable layers, no fine-tuning "
             f"(reconstruction {'on' if res['reconstruct'] else 'off'})",
             f"{'':14} {'reward top-1':>12} {'test top-1':>10} {'MFLOPs':>8} {'FLOPs':>6} {'params':>9} {'params':>6}"]
    for r in rows:
        lines.append(f"{r['name']:14} {r['reward_top1']:11.2f}% {r['test_top1']:9.2f}% {r['flops'] / 1e6:8.2f} "
                     f"{r['flops_ratio']:6.3f} {r['params']:9d} {r['params_ratio']:6.3f}")
    emit(res, args.json, "\n".join(lines))
    return 0


def compare(run_dir: str, policy: str | None = None, data_dir: str | None = None, device: str = "cpu",
            progress: bool = False) -> dict:
    """Base, uniform at the run's budget and the run's best policy, pruned by one pruner."""
    from amc.checkpoint import read_json
    from amc.cli.common import build_pruner, load_data
    from amc.cli.export import prune_args_from_run
    from amc.loading import resolve_model
    from amc.policy import load_policy
    from amc.train import evaluate, resolve_device

    dev = resolve_device(device)
    ns, source = prune_args_from_run(argparse.Namespace(run=run_dir, policy=policy, data_dir=data_dir,
                                                        device=device, json=not progress))
    best = read_json(ns.policy)
    config = read_json(f"{run_dir}/config.json")
    target = best.get("target") if isinstance(best, dict) else None
    target = target if isinstance(target, (int, float)) else config.get("config", {}).get("target")
    if not isinstance(target, (int, float)):
        raise AmcError(f"{run_dir}: no budget target recorded; cannot build the uniform baseline")
    splits = load_data(ns)
    model, spec, _ = resolve_model(ns.model, ns.weights, splits.info, ns.width)
    pruner = build_pruner(ns, model, splits, ns.seed)
    reconstruct = not ns.no_reconstruct
    rows = []

    def row(name: str, net, counts=None) -> None:
        net = net.to(dev)
        r = {"name": name, "reward_top1": evaluate(net, splits.reward, dev),
             "test_top1": evaluate(net, splits.test, dev),
             "flops": pruner.flops(counts) if counts else pruner.flops.full,
             "params": pruner.params(counts) if counts else pruner.params.full}
        r["flops_ratio"], r["params_ratio"] = r["flops"] / pruner.flops.full, r["params"] / pruner.params.full
        rows.append(r)
        if progress:
            print(f"evaluated {name}", file=sys.stderr)

    # evaluate a copy: moving the pruner's own model to the GPU (or to channels-last on CPU)
    # would leave it where the next prune cannot slice it
    row("base", copy.deepcopy(model))
    uniform = pruner.uniform_counts(float(target), ns.channel_round)
    row(f"uniform@{target:g}", pruner.prune(uniform, reconstruct), uniform)
    amc_counts = load_policy(ns.policy, pruner, ns.channel_round)
    row("AMC", pruner.prune(amc_counts, reconstruct), amc_counts)
    return {"run": run_dir, "model": spec.name, "dataset": ns.dataset, "layers": pruner.num_layers,
            "reconstruct": reconstruct, "target": target, "rows": rows, **source}

"""``amc prune``: apply a policy (uniform or from a file) and write a slim checkpoint."""
from __future__ import annotations

import argparse
import sys

from amc.cli.common import add_common, add_spec, emit, fresh_out_dir, setup_threads, spec_from
from amc.spec import DATA, MODEL, PRUNER


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="apply a pruning policy and write a slim checkpoint",
                       description="Prune a trained model with a policy: uniform:R keeps the largest uniform "
                                   "preserve ratio whose FLOPs are at most R of the original; FILE is a policy "
                                   "JSON (e.g. best_policy.json from amc search). Channels are chosen by L1 norm "
                                   "and the next layer is refitted by least squares, then the model is sliced "
                                   "into a physically smaller one.")
    add_spec(p, MODEL, DATA, PRUNER)
    add_common(p)
    p.add_argument("--policy", required=True, help="uniform:R (R in (0, 1]) or a policy JSON file")
    p.add_argument("--out", required=True, help="output folder for the slim model.safetensors and model.json")
    p.add_argument("--show-groups", action="store_true", help="print the prunable groups and what is left alone")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc.api import parse_uniform, prune
    from amc.pruned import save_pruned
    from amc.train import resolve_device

    setup_threads(args)
    spec = spec_from(args)
    resolve_device(args.device)  # a bad device or policy string fails before the output folder is made
    parse_uniform(args.policy)
    out = fresh_out_dir(args.out)
    problem = spec.build(progress=not args.json)
    if args.show_groups:
        print(problem.pruner.graph.report(), file=sys.stderr)
    slim, meta = prune(spec, args.policy, device=args.device, problem=problem)
    save_pruned(out, slim, meta)
    res = {k: meta[k] for k in ("flops", "params", "flops_ratio", "params_ratio", "reward_top1", "test_top1")}
    res.update(base_reward_top1=meta["base"]["reward_top1"], out=str(out), layers=len(meta["channels"]))
    emit(res, args.json, f"saved {out}: {len(meta['channels'])} layers pruned, FLOPs {meta['flops_ratio']:.3f}, "
                         f"params {meta['params_ratio']:.3f} of the original; reward-set top-1 "
                         f"{meta['reward_top1']:.2f}% (base {meta['base']['reward_top1']:.2f}%), "
                         f"test top-1 {meta['test_top1']:.2f}%")
    return 0

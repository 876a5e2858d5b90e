"""``amc prune``: apply a policy (uniform or from a file) and write a slim checkpoint."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import nn

from amc.cli.common import (seed_int, add_common, add_data_args, add_model_args, add_pruner_args, build_pruner, emit,
                            fresh_out_dir, load_data, setup_threads)
from amc.errors import AmcError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="apply a pruning policy and write a slim checkpoint",
                       description="Prune a trained model with a policy: uniform:R keeps the largest uniform "
                                   "preserve ratio whose FLOPs are at most R of the original; FILE is a policy "
                                   "JSON (e.g. best_policy.json from amc search). Channels are chosen by L1 norm "
                                   "and the next layer is refitted by least squares, then the model is sliced "
                                   "into a physically smaller one.")
    add_model_args(p)
    add_data_args(p)
    add_common(p)
    add_pruner_args(p)
    p.add_argument("--policy", required=True, help="uniform:R (R in (0, 1]) or a policy JSON file")
    p.add_argument("--out", required=True, help="output folder for the slim model.safetensors and model.json")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the calibration sampling (default 0)")
    p.add_argument("--show-groups", action="store_true", help="print the prunable groups and what is left alone")
    p.set_defaults(func=run)


def parse_uniform(policy: str) -> float | None:
    if not policy.startswith("uniform:"):
        return None
    try:
        r = float(policy.split(":", 1)[1])
    except ValueError as e:
        raise AmcError(f"--policy uniform:R needs a number, got {policy!r}") from e
    if not math.isfinite(r) or not (0.0 < r <= 1.0):
        raise AmcError(f"uniform FLOPs ratio must be in (0, 1], got {policy.split(':', 1)[1]}")
    return r


def run(args: argparse.Namespace) -> int:
    from amc.pruned import save_pruned
    from amc.train import resolve_device

    setup_threads(args)
    resolve_device(args.device)  # a bad device or policy string fails before the output folder is made
    parse_uniform(args.policy)
    out = fresh_out_dir(args.out)
    slim, meta = prune_from_args(args)
    save_pruned(out, slim, meta)
    res = {k: meta[k] for k in ("flops", "params", "flops_ratio", "params_ratio", "reward_top1", "test_top1")}
    res.update(base_reward_top1=meta["base"]["reward_top1"], out=str(out), layers=len(meta["channels"]))
    emit(res, args.json, f"saved {out}: {len(meta['channels'])} layers pruned, FLOPs {meta['flops_ratio']:.3f}, "
                         f"params {meta['params_ratio']:.3f} of the original; reward-set top-1 "
                         f"{meta['reward_top1']:.2f}% (base {meta['base']['reward_top1']:.2f}%), "
                         f"test top-1 {meta['test_top1']:.2f}%")
    return 0


def prune_from_args(args: argparse.Namespace) -> tuple[nn.Module, dict]:
    """Prune as ``amc prune`` does; returns the slim model (on CPU) and its checkpoint metadata.

    ``args`` holds the attributes of ``amc prune``'s options (``amc export --run`` builds them
    from a search run's ``config.json``). Nothing is written.
    """
    from amc.loading import resolve_model
    from amc.policy import load_policy
    from amc.surgery import channel_plan
    from amc.train import evaluate, resolve_device

    device = resolve_device(args.device)
    uniform = parse_uniform(args.policy)
    splits = load_data(args)
    model, spec, weights = resolve_model(args.model, args.weights, splits.info, args.width)
    pruner = build_pruner(args, model, splits, args.seed)
    if getattr(args, "show_groups", False):
        print(pruner.graph.report(), file=sys.stderr)
    if uniform is not None:
        counts = pruner.uniform_counts(uniform, args.channel_round)
    else:
        counts = load_policy(args.policy, pruner, args.channel_round)
    slim = pruner.prune(counts, reconstruct=not args.no_reconstruct)
    desc = pruner.describe(counts)
    reward_top1 = evaluate(slim.to(device), splits.reward, device)
    test_top1 = evaluate(slim, splits.test, device)
    base_reward = evaluate(model.to(device), splits.reward, device)
    slim.cpu().to(memory_format=torch.contiguous_format)
    meta = {
        "kind": "pruned", "model": spec.to_dict(), "dataset": args.dataset, "split": splits.record,
        "input_shape": list(splits.train.shape), "coupled": args.coupled, "criterion": args.criterion,
        "channel_round": args.channel_round, "reconstruct": not args.no_reconstruct,
        "policy": {"source": args.policy, "ratios": [l["ratio"] for l in desc["layers"]]},
        "channels": channel_plan(pruner.graph, counts),
        # absolute, so amc eval can rebuild the base model from any working folder
        "base": {"weights": str(Path(weights).resolve()) if weights else None, "flops": pruner.flops.full,
                 "params": pruner.params.full, "reward_top1": base_reward},
        "flops": desc["flops"], "params": desc["params"], "flops_ratio": desc["flops_ratio"],
        "params_ratio": desc["params_ratio"], "reward_top1": reward_top1, "test_top1": test_top1,
    }
    return slim, meta

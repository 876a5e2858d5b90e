"""``amc eval``: test top-1, FLOPs and params of a model (latency with ``--checkpoint``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from amc.cli.common import add_common, add_spec, emit, setup_threads, spec_from
from amc.errors import AmcError
from amc.spec import DATA, MODEL


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model: test top-1, FLOPs, params",
                       description="Evaluate a model on the test set (the one place the test set is used).")
    add_spec(p, MODEL, DATA)
    add_common(p)
    p.add_argument("--checkpoint", default=None, nargs="+", metavar="DIR",
                   help="a folder written by amc prune/finetune/export/quantize; adds latency vs. the base model. "
                        "Several folders pruned from one base are timed together, interleaved with that base, "
                        "so their speedups compare within one run")
    from amc.cli.eval_checkpoint import add_latency_args

    add_latency_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc.flops import count_macs, count_params
    from amc.train import evaluate, resolve_device

    setup_threads(args)
    if args.plot and not args.checkpoint:
        raise AmcError("--plot draws checkpoints against their base: give --checkpoint")
    if args.plot and Path(args.plot).is_dir():
        raise AmcError(f"--plot {args.plot} is a folder; give a .png file")
    if args.checkpoint:
        from amc.cli.eval_checkpoint import run_checkpoint

        return run_checkpoint(args)
    device = resolve_device(args.device)
    prune_spec = spec_from(args)
    splits = prune_spec.load_splits()
    model, spec, weights = prune_spec.load_model(splits)
    shape = splits.test.shape
    flops, params = count_macs(model, shape), count_params(model)
    top1 = evaluate(model.to(device), splits.test, device)
    res = {"model": spec.name, "weights": weights, "dataset": prune_spec.dataset, "top1": top1,
           "flops": flops, "params": params}
    emit(res, args.json, f"{spec.name} on {prune_spec.dataset} test set: top-1 {top1:.2f}%  "
                         f"{flops / 1e6:.2f}M MACs  {params / 1e6:.3f}M params")
    return 0

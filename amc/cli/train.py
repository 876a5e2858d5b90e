"""``amc train``: train a base model and write a safetensors + JSON checkpoint."""
from __future__ import annotations

import argparse
import time

from amc.cli.common import add_common, add_spec, emit, fresh_out_dir, setup_threads, spec_from
from amc.options import add_options, values_given
from amc.train import TrainConfig
from amc.spec import DATA, MODEL


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a base model from scratch",
                       description="Train a model with SGD + cosine schedule; the checkpoint kept is the "
                                   "epoch with the best reward-set accuracy (never chosen on the test set).")
    add_spec(p, MODEL, DATA, skip=("weights", "allow_train_overlap"))
    add_common(p)
    add_options(p, TrainConfig)
    p.add_argument("--init", default=None,
                   help="start from these weights (.safetensors or .pt state_dict) instead of a random init")
    p.add_argument("--out", required=True, help="output folder for model.safetensors, model.json and tb/")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc.checkpoint import save_checkpoint
    from amc.flops import count_macs, count_params
    from amc.train import evaluate, resolve_device, train

    setup_threads(args)
    device = resolve_device(args.device)
    cfg = TrainConfig(**values_given(args, TrainConfig), device=str(device)).validate()
    prune_spec = spec_from(args, weights=args.init)
    out = fresh_out_dir(args.out)
    splits = prune_spec.load_splits()
    model, spec, _ = prune_spec.load_model(splits, require_weights=False)
    result = train(model, splits, cfg, out_dir=out)
    test_top1 = evaluate(model, splits.test, device)
    model.cpu()
    shape = splits.train.shape
    meta = {
        "kind": "base", "model": spec.to_dict(), "dataset": prune_spec.dataset, "split": splits.record,
        "flops": count_macs(model, shape), "params": count_params(model),
        "reward_top1": result["reward_top1"], "test_top1": test_top1, "best_epoch": result["epoch"],
        "train": result["config"], "init": args.init, "history": result["history"], "seconds": round(result["seconds"], 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": "amc " + " ".join(getattr(args, "_argv", [])),
    }
    save_checkpoint(out, model, meta)
    res = {k: meta[k] for k in ("flops", "params", "reward_top1", "test_top1", "best_epoch")}
    res["out"] = str(out)
    emit(res, args.json, f"saved {out}/model.safetensors: reward-set top-1 {meta['reward_top1']:.2f}%, "
                         f"test top-1 {test_top1:.2f}%, {meta['flops'] / 1e6:.2f}M MACs, {meta['params'] / 1e6:.3f}M params")
    return 0

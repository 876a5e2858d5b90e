"""``amc train``: train a base model and write a safetensors + JSON checkpoint."""
from __future__ import annotations

import argparse
import time

from amc.cli.common import seed_int, add_common, add_data_args, add_model_args, check_finite, emit, fresh_out_dir, load_data, setup_threads


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a base model from scratch",
                       description="Train a model with SGD + cosine schedule; the checkpoint kept is the "
                                   "epoch with the best reward-set accuracy (never chosen on the test set).")
    add_model_args(p, weights=False)
    add_data_args(p)
    add_common(p)
    p.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (default 5e-4)")
    p.add_argument("--seed", type=seed_int, default=0, help="training seed (default 0)")
    p.add_argument("--init", default=None,
                   help="start from these weights (.safetensors or .pt state_dict) instead of a random init")
    p.add_argument("--out", required=True, help="output folder for model.safetensors, model.json and tb/")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc.checkpoint import save_checkpoint
    from amc.errors import AmcError
    from amc.flops import count_macs, count_params
    from amc.loading import resolve_model
    from amc.train import TrainConfig, evaluate, resolve_device, train

    setup_threads(args)
    if args.epochs < 1:
        raise AmcError(f"--epochs must be >= 1, got {args.epochs}")
    check_finite("--lr", args.lr, 0, lo_open=True)
    device = resolve_device(args.device)
    out = fresh_out_dir(args.out)
    splits = load_data(args)
    model, spec, _ = resolve_model(args.model, args.init, splits.info, args.width, require_weights=False)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, seed=args.seed, device=str(device))
    result = train(model, splits, cfg, out_dir=out)
    test_top1 = evaluate(model, splits.test, device)
    model.cpu()
    shape = splits.train.shape
    meta = {
        "kind": "base", "model": spec.to_dict(), "dataset": args.dataset, "split": splits.record,
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

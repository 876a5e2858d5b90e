"""``amc finetune``: fine-tune a slim checkpoint with ``amc train``'s loop, on the split it was made with."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


from amc.cli.common import add_common, emit, fresh_out_dir, setup_threads
from amc.options import add_options, bounded, values_given
from amc.train import TrainConfig

FINETUNE_DEFAULTS = {"lr": 0.01}
"""A pruned model starts close to a good one: a tenth of training's peak learning rate."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a pruned checkpoint",
                       description="Fine-tune a slim checkpoint (from amc prune, finetune or export) with the "
                                   "training loop of amc train, on the data split recorded in the checkpoint. "
                                   "The epoch kept is the one with the best reward-set accuracy (never chosen "
                                   "on the test set); the output folder has the same format and rebuilds with "
                                   "amc.load_pruned. Data-parallel on several processes or GPUs: torchrun "
                                   "--nproc-per-node N -m amc finetune ... (--batch-size stays the global batch, "
                                   "so the schedule and the result are those of one process; rank 0 writes).")
    p.add_argument("--checkpoint", required=True, help="a folder written by amc prune, finetune or export")
    p.add_argument("--epochs", type=bounded(int, "--epochs", 1), required=True, help="fine-tuning epochs")
    p.add_argument("--out", required=True, help="output folder for model.safetensors, model.json and tb/")
    add_options(p, TrainConfig, skip=("epochs",), defaults=FINETUNE_DEFAULTS)
    p.add_argument("--data-dir", default=None,
                   help="where the data lies (else $AMC_DATA, /usr/share/datasets/fashion-mnist, then download)")
    p.add_argument("--allow-train-overlap", action="store_true",
                   help="fine-tune on a checkpoint whose reward set holds images its base model was trained on "
                        "(refused otherwise; recorded in the output)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc import distributed

    try:
        code = _run(args, distributed.init(args.device))
    except BaseException:
        distributed.finish(wait=False)
        raise
    distributed.finish()
    return code


def _run(args: argparse.Namespace, ranks) -> int:
    import torch

    from amc.pruned import load_checkpoint, load_recorded_splits, save_pruned
    from amc.train import evaluate, resolve_device, train

    setup_threads(args)
    device = resolve_device(args.device)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", ranks.local_rank)
    cfg = TrainConfig(**{**FINETUNE_DEFAULTS, **values_given(args, TrainConfig), "device": str(device)}).validate()
    src = Path(args.checkpoint)
    model, meta = load_checkpoint(src)
    splits = load_recorded_splits(meta, args.data_dir, check_overlap=True,
                                  allow_train_overlap=args.allow_train_overlap)
    # under torchrun, rank 0 alone owns the output folder, the TensorBoard log and the printout
    out = fresh_out_dir(args.out) if ranks.main else None
    model.to(device)
    before = evaluate(model, splits.reward, device)
    result = train(model, splits, cfg, out_dir=out, progress=ranks.main and not args.json)
    if not ranks.main:
        return 0
    test_top1 = evaluate(model, splits.test, device)
    model.cpu()
    new = {k: v for k, v in meta.items() if k not in ("onnx",)}  # an ONNX file describes the old weights
    new.update({
        "kind": "finetuned",
        "source": {"checkpoint": str(src.resolve()), "kind": meta.get("kind"),
                   "reward_top1": meta.get("reward_top1"), "test_top1": meta.get("test_top1")},
        "reward_top1_before": before, "reward_top1": result["reward_top1"], "test_top1": test_top1,
        "finetune": {"epochs": args.epochs, "best_epoch": result["epoch"], "config": result["config"],
                     "history": result["history"], "seconds": round(result["seconds"], 1),
                     "allow_train_overlap": args.allow_train_overlap,
                     **({"distributed": result["distributed"]} if "distributed" in result else {})},
        "split": splits.record,  # with train_overlap: how many reward images the base model was trained on
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": "amc " + " ".join(getattr(args, "_argv", [])),
    })
    save_pruned(out, model, new)
    if result["reward_top1"] < before:
        sys.stderr.write(f"note: no epoch beat the reward-set top-1 of the starting weights ({before:.2f}%); "
                         f"kept the best epoch ({result['reward_top1']:.2f}%); {src} still holds the start\n")
    res = {"reward_top1_before": before, "reward_top1": result["reward_top1"], "test_top1": test_top1,
           "best_epoch": result["epoch"], "epochs": args.epochs, "flops": new.get("flops"),
           "params": new.get("params"),
           "out": str(out)}
    emit(res, args.json, f"saved {out}: reward-set top-1 {before:.2f}% -> {result['reward_top1']:.2f}% "
                         f"(best epoch {result['epoch'] + 1} of {args.epochs}), test top-1 {test_top1:.2f}%")
    return 0

"""Arguments and helpers shared by several commands."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from amc.errors import AmcError


MAX_SEED = 2**32 - 1
"""Seeds are unsigned 32-bit integers, as numpy's seeding takes them."""


def seed_int(text: str) -> int:
    """argparse type of a seed: an integer in [0, 2**32 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_SEED}], got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_SEED}], got {value}")
    return value


def check_seed(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise AmcError(f"{name} must be an integer in [0, {MAX_SEED}], got {value}")
    return value


def add_model_args(p: argparse.ArgumentParser, weights: bool = True) -> None:
    p.add_argument("--model", default="plain20",
                   help="zoo name (plain20, resnet20, resnet56, vgg16, mobilenet, mobilenetv2), "
                        "tv:NAME for a torchvision model, or path/to/file.py:factory (default: plain20)")
    if weights:
        p.add_argument("--weights", default=None,
                       help=".safetensors or .pt state_dict; zoo models default to the shipped weights")
    p.add_argument("--width", type=float, default=None, help="width multiplier of a zoo model (default 1.0)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion-mnist",
                   help="fashion-mnist (default), cifar10 or imagefolder:PATH")
    p.add_argument("--data-dir", default=None,
                   help="where the data lies (else $AMC_DATA, /usr/share/datasets/fashion-mnist, then download)")
    p.add_argument("--mean", type=float, nargs="+", default=None, help="override per-channel normalisation mean")
    p.add_argument("--std", type=float, nargs="+", default=None, help="override per-channel normalisation std")
    p.add_argument("--reward-set-size", type=int, default=5000,
                   help="images held out of the training split for rewards and model selection (default 5000)")
    p.add_argument("--split-seed", type=seed_int, default=0, help="seed of the reward-set split (default 0)")
    p.add_argument("--image-size", type=int, default=224, help="image size for imagefolder: datasets (default 224)")


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="where to compute (default cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def setup_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise AmcError("--threads must be >= 1")
        torch.set_num_threads(args.threads)


def load_data(args: argparse.Namespace):
    from amc.data import load_splits

    return load_splits(args.dataset, args.data_dir, args.split_seed, args.reward_set_size,
                       args.mean, args.std, args.image_size)


def check_finite(name: str, value: float, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False) -> float:
    if value is None or not math.isfinite(value):
        raise AmcError(f"{name} must be a finite number, got {value}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise AmcError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        raise AmcError(f"{name} must be <= {hi}, got {value}")
    return value


def fresh_out_dir(path: str) -> Path:
    """An output folder that does not yet hold results (see :func:`amc.checkpoint.fresh_dir`)."""
    from amc.checkpoint import fresh_dir

    return fresh_dir(path, "--out")


def emit(result: dict[str, Any], as_json: bool, table: str | None = None) -> None:
    """Print ``table`` for people, or ``result`` as the last line of stdout for machines."""
    if as_json:
        print(json.dumps(result, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    else:
        print(table if table is not None else json.dumps(result, indent=2, default=str))
    sys.stdout.flush()


def add_pruner_args(p: argparse.ArgumentParser) -> None:
    """Options of the pruning engine shared by prune, search and bench."""
    p.add_argument("--coupled", default="skip", choices=["skip", "shared"],
                   help="residual-tied channels: leave alone (skip, default) or prune as one shared group")
    p.add_argument("--criterion", default="l1", help="channel selection criterion: l1 (default) or l1-producer")
    p.add_argument("--channel-round", type=int, default=1, help="keep a multiple of this many channels (default 1)")
    p.add_argument("--no-reconstruct", action="store_true", help="skip the least-squares weight reconstruction")
    p.add_argument("--calib-batches", type=int, default=60, help="calibration batches for reconstruction (default 60)")
    p.add_argument("--calib-batch-size", type=int, default=50, help="images per calibration batch (default 50)")
    p.add_argument("--points-per-image", type=int, default=10, help="sampled positions per image (default 10)")
    add_max_cache_arg(p)


def add_max_cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-cache-mb", type=float, default=DEFAULT_MAX_CACHE_MB, metavar="MB",
                   help="refuse to start when the least-squares cache (8*d*(d+n) bytes per layer, d inputs and "
                        f"n outputs) would exceed this (default {DEFAULT_MAX_CACHE_MB})")


DEFAULT_MAX_CACHE_MB = 2048


def max_cache_bytes(args: argparse.Namespace) -> int | None:
    mb = getattr(args, "max_cache_mb", DEFAULT_MAX_CACHE_MB)
    if mb is None:
        return None
    if not math.isfinite(mb) or mb <= 0:
        raise AmcError(f"--max-cache-mb must be a positive number, got {mb}")
    return int(mb * 2**20)


def build_pruner(args: argparse.Namespace, model, splits, seed: int = 0):
    """A ChannelPruner for ``model`` with calibration batches drawn from the training part."""
    from amc.pruner import ChannelPruner

    check_seed("--seed", seed)
    for name in ("calib_batches", "calib_batch_size", "points_per_image", "channel_round"):
        if getattr(args, name) < 1:
            raise AmcError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    limit = max_cache_bytes(args)
    calib = None
    if not args.no_reconstruct:
        calib = splits.calibration_batches(args.calib_batches, args.calib_batch_size, seed)
    return ChannelPruner(model, splits.train.shape, calib, coupled=args.coupled, criterion=args.criterion,
                         points_per_image=args.points_per_image, seed=seed, progress=not getattr(args, "json", False),
                         max_cache_bytes=limit)

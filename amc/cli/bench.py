"""``amc bench``: speed and quality benchmarks (numbers for the README come from here)."""
from __future__ import annotations

import argparse
import platform
import sys
import time

from amc.cli.common import (add_common, add_data_args, add_model_args, add_pruner_args, build_pruner, emit,
                            load_data, setup_threads)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: engine speed and quality",
                       description="Benchmarks, measured side by side in one process.")
    bsub = p.add_subparsers(dest="bench", metavar="BENCH", parser_class=type(p))
    pp = bsub.add_parser("prune", help="episode cost vs. one evaluation of the unpruned model",
                         description="(a) time to evaluate the unpruned model on the reward set; (b) median time of "
                                     "one 'apply random policy at the target + reconstruct + evaluate'; the ratio "
                                     "b/a (target <= 0.8 at 50%% FLOPs). Also reward-set top-1 of the uniform "
                                     "policy with and without reconstruction.")
    add_model_args(pp)
    add_data_args(pp)
    add_common(pp)
    add_pruner_args(pp)
    pp.add_argument("--trials", type=int, default=7, help="random policies timed (default 7)")
    pp.add_argument("--target", type=float, default=0.5, help="FLOPs ratio of the random policies (default 0.5)")
    pp.add_argument("--seed", type=int, default=0, help="seed of the random policies (default 0)")
    pp.set_defaults(func=run_prune)
    from amc.cli import bench_quality

    bench_quality.register(bsub)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])


def run_prune(args: argparse.Namespace) -> int:
    import torch

    from amc.bench import bench_prune, uniform_quality
    from amc.cli.common import check_finite
    from amc.errors import AmcError
    from amc.loading import resolve_model

    setup_threads(args)
    check_finite("--target", args.target, 0, 1, lo_open=True)
    if args.trials < 1:
        raise AmcError(f"--trials must be >= 1, got {args.trials}")
    splits = load_data(args)
    model, spec, weights = resolve_model(args.model, args.weights, splits.info, args.width)
    t0 = time.perf_counter()
    pruner = build_pruner(args, model, splits, args.seed)
    setup_s = time.perf_counter() - t0
    log = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr))
    speed = bench_prune(pruner, model, splits.reward, args.trials, args.target, args.seed, log)
    quality = uniform_quality(pruner, model, splits.reward, args.target)
    res = {"model": spec.name, "weights": weights, "dataset": args.dataset, "layers": pruner.num_layers,
           "setup_s": setup_s, "feature_cache_bytes": pruner.cache.nbytes if pruner.cache else 0,
           **speed, **quality, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                                         f"torch {torch.__version__}"}
    table = "\n".join([
        f"amc bench prune: {spec.name} on {args.dataset}, {pruner.num_layers} prunable layers, "
        f"{speed['reward_set_size']} reward images, {speed['threads']} threads",
        f"  setup (graph + calibration cache, once per search): {setup_s:.2f} s, "
        f"cache {res['feature_cache_bytes'] / 1e6:.1f} MB",
        f"  (a) evaluate unpruned model:                 {speed['unpruned_eval_s']:.3f} s",
        f"  (b) random policy + reconstruct + evaluate:  {speed['episode_s']:.3f} s "
        f"(prune+reconstruct {speed['episode_prune_reconstruct_s']:.3f} s, evaluate {speed['episode_eval_s']:.3f} s, "
        f"mean FLOPs ratio {speed['mean_flops_ratio']:.3f})",
        f"  b/a = {speed['ratio_b_over_a']:.2f}",
        f"  uniform @ {args.target:.2f} FLOPs: reward-set top-1 {quality['uniform_no_reconstruct_reward_top1']:.2f}% "
        f"without reconstruction, "
        + (f"{quality['uniform_reconstruct_reward_top1']:.2f}% with" if "uniform_reconstruct_reward_top1" in quality
           else "(reconstruction off)")
        + f" (base {quality['base_reward_top1']:.2f}%)",
    ])
    emit(res, args.json, table)
    return 0

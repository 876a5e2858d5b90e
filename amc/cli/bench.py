"""``amc bench``: speed and quality benchmarks (numbers for the README come from here)."""
from __future__ import annotations

import argparse
import platform
import sys
import time

from amc.cli.common import (add_common, add_data_args, add_model_args, add_pruner_args, build_pruner, emit,
                            add_max_cache_arg, load_data, seed_int, setup_threads)


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
    pp.add_argument("--seed", type=seed_int, default=0, help="seed of the random policies (default 0)")
    pp.set_defaults(func=run_prune)

    ps = bsub.add_parser("search", help="a short amc search in a child process: seconds per episode, peak memory",
                         description="Runs a short amc search in a child process and reports its seconds per "
                                     "episode, its wall time, its peak resident memory (the child's ru_maxrss) and "
                                     "the size of its least-squares cache.")
    add_model_args(ps)
    add_data_args(ps)
    add_common(ps)
    ps.add_argument("--algo", default="ddpg", choices=["ddpg", "td3", "sac", "random"], help="(default ddpg)")
    ps.add_argument("--episodes", type=int, default=10, help="episodes in all (default 10)")
    ps.add_argument("--warmup", type=int, default=5, help="warm-up episodes (default 5)")
    ps.add_argument("--target-flops", type=float, default=0.5, help="FLOPs budget (default 0.5)")
    ps.add_argument("--seed", type=seed_int, default=0, help="seed of the search (default 0)")
    ps.add_argument("--no-reconstruct", action="store_true", help="skip the least-squares reconstruction")
    ps.add_argument("--calib-batches", type=int, default=60, help="calibration batches (default 60)")
    ps.add_argument("--calib-batch-size", type=int, default=50, help="images per calibration batch (default 50)")
    ps.add_argument("--points-per-image", type=int, default=10, help="sampled positions per image (default 10)")
    add_max_cache_arg(ps)
    ps.add_argument("--run", default=None, help="keep the search's run folder here (default: a temporary one)")
    ps.set_defaults(func=run_search_bench)
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


def run_search_bench(args: argparse.Namespace) -> int:
    import json
    import os
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from amc.checkpoint import read_json
    from amc.errors import AmcError

    child = ["search", "--model", args.model, "--dataset", args.dataset, "--reward-set-size", str(args.reward_set_size),
             "--split-seed", str(args.split_seed), "--image-size", str(args.image_size), "--algo", args.algo,
             "--episodes", str(args.episodes), "--warmup", str(args.warmup), "--target-flops", str(args.target_flops),
             "--seed", str(args.seed), "--calib-batches", str(args.calib_batches), "--calib-batch-size",
             str(args.calib_batch_size), "--points-per-image", str(args.points_per_image), "--max-cache-mb",
             str(args.max_cache_mb), "--device", args.device, "--quiet", "--json"]
    for flag, value in (("--weights", args.weights), ("--width", args.width), ("--data-dir", args.data_dir),
                        ("--threads", args.threads)):
        if value is not None:
            child += [flag, str(value)]
    for flag, values in (("--mean", args.mean), ("--std", args.std)):
        if values is not None:
            child += [flag, *map(str, values)]
    if args.no_reconstruct:
        child.append("--no-reconstruct")
    scratch = None if args.run else Path(tempfile.mkdtemp(prefix="amc-bench-search-"))
    run = Path(args.run) if args.run else scratch / "run"
    child += ["--run", str(run)]
    try:
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "amc", *child], stdout=out, stderr=err, text=True)
            # wait4 gives this child's own peak memory (RUSAGE_CHILDREN mixes in every earlier child)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if proc.returncode != 0:
            last = (stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            raise AmcError(last[len("error: "):] if last.startswith("error: ") else f"the search failed: {last}")
        res = json.loads(stdout.strip().splitlines()[-1])
        config = read_json(run / "config.json")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    out_res = {"model": args.model, "dataset": args.dataset, "algo": args.algo, "episodes": res["episodes"],
               "layers": config.get("num_layers"), "seconds_per_episode": res["seconds_per_episode"],
               "search_s": res["seconds"], "wall_s": round(wall, 2),
               "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
               "feature_cache_mb": round(config.get("feature_cache_bytes", 0) / 2**20, 2),
               "threads": config.get("threads"), "machine": f"{platform.machine()}, python {platform.python_version()}"}
    emit(out_res, args.json,
         f"amc bench search: {args.model} on {args.dataset}, {args.algo}, {res['episodes']} episodes of "
         f"{out_res['layers']} steps, {out_res['threads']} threads\n"
         f"  {res['seconds_per_episode']:.3f} s per episode ({res['seconds']:.1f} s searching, "
         f"{wall:.1f} s with start-up and set-up)\n"
         f"  peak memory (RSS) {out_res['peak_rss_mb']:.0f} MB, least-squares cache {out_res['feature_cache_mb']:.1f} MB")
    return 0

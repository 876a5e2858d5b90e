"""``amc bench``: speed and quality benchmarks (numbers for the README come from here)."""
from __future__ import annotations

import argparse
import platform
import sys
import time

from agents.config import SEARCH, SearchConfig
from amc.cli.common import absolute, add_common, add_latency_target, add_spec, emit, setup_threads, spec_from
from amc.options import add_options, bounded, seed_int, values_given
from amc.spec import BUDGET, DATA, LATENCY, MODEL, PRUNER, PruneSpec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: engine speed and quality",
                       description="Benchmarks, measured side by side in one process.")
    bsub = p.add_subparsers(dest="bench", metavar="BENCH", parser_class=type(p))
    pp = bsub.add_parser("prune", help="episode cost vs. one evaluation of the unpruned model",
                         description="(a) time to evaluate the unpruned model on the reward set; (b) median time of "
                                     "one 'apply random policy at the target + reconstruct + evaluate'; the ratio "
                                     "b/a (target <= 0.8 at 50% FLOPs). Also reward-set top-1 of the uniform "
                                     "policy with and without reconstruction. --target is the FLOPs ratio of the "
                                     "random policies; --seed seeds them and the calibration.")
    add_spec(pp, MODEL, DATA, PRUNER, BUDGET)
    add_common(pp)
    pp.add_argument("--trials", type=bounded(int, "--trials", 1), default=7, help="random policies timed (default 7)")
    pp.set_defaults(func=run_prune)

    ps = bsub.add_parser("search", help="a short amc search in a child process: seconds per episode, peak memory",
                         description="Runs a short search in a child process and reports its seconds per "
                                     "episode, its wall time, its peak resident memory (the child's ru_maxrss), "
                                     "the size of its least-squares cache, and what keeping it resumable costs "
                                     "(capturing and writing RUN/state.pt).")
    add_spec(ps, MODEL, DATA, PRUNER, BUDGET, LATENCY)
    add_common(ps)
    add_options(ps, SearchConfig, [SEARCH], skip=("episodes", "warmup"))
    ps.add_argument("--episodes", type=bounded(int, "--episodes", 1), default=10, help="episodes in all (default 10)")
    ps.add_argument("--warmup", type=bounded(int, "--warmup", 0), default=5, help="warm-up episodes (default 5)")
    ps.add_argument("--run", default=None, help="keep the search's run folder here (default: a temporary one)")
    ps.set_defaults(func=run_search_bench)
    pl = bsub.add_parser("latency", help="latency table's predictions against end-to-end measurements",
                         description="Draws --policies random policies near --target of the predicted latency, "
                                     "plus uniform; builds each slim model and times it end to end, interleaved "
                                     "with the base, in the target runtime; compares with the table's prediction. "
                                     "Reports the median, p90 and largest absolute relative error of the latency "
                                     "(ms) and of the latency ratio to the base, and a scatter plot.")
    add_latency_target(pl)
    add_options(pl, PruneSpec, [BUDGET], only=("target", "lbound"))
    add_common(pl)
    pl.add_argument("--policies", type=bounded(int, "--policies", 0), default=20,
                    help="random policies besides uniform (default 20)")
    pl.add_argument("--repeats", type=bounded(int, "--repeats", 1), default=10,
                    help="interleaved timing rounds per policy (default 10)")
    pl.add_argument("--policy-seed", type=seed_int, default=0, help="seed of the random policies (default 0)")
    pl.add_argument("--policy", default=None,
                    help="also time this policy file (e.g. RUN/best_policy.json), labelled 'policy'")
    pl.add_argument("--uniform-ladder", action="store_true",
                    help="also time every distinct uniform model at --channel-round, from --lbound to full "
                         "width; with --policy, writes OUT/nearest_uniform.json, the uniform policy whose "
                         "measured latency ratio is nearest the policy's (a baseline at equal latency), decided "
                         "by timing the policy and the three nearest again, together in one run")
    pl.add_argument("--per-group", action="store_true",
                    help="also cut each group alone to half its channels (the others full) and time all of them "
                         "with the base in one interleaved run: the latency each cut saves, measured against "
                         "predicted, in latency.json ('per_group') and groups.png; shows which layers the table "
                         "misprices. Holds every cut model at once, three copies each: meant for small nets")
    pl.add_argument("--out", required=True, help="folder for latency.json and latency.png")
    pl.set_defaults(func=run_latency_bench)
    pc = bsub.add_parser("coverage", help="which torchvision models amc prunes end to end",
                         description="For every torchvision classification model with at most --max-params "
                                     "parameters (built without weights; synthetic input at the smallest size its "
                                     "weights declare, at least 32 pixels): the prunable layers, the smallest "
                                     "FLOPs ratio reachable (every layer at --lbound), slim/masked parity at "
                                     "uniform 0.5, ONNX export checked in onnxruntime, and the error where a step "
                                     "fails. Writes OUT/coverage.json and OUT/coverage.md.")
    pc.add_argument("--max-params", type=bounded(float, "--max-params", 0, lo_open=True), default=30.0,
                    help="largest model tried, in millions of parameters (default 30)")
    pc.add_argument("--models", nargs="+", default=None, help="only these torchvision names, or zoo names (default: every torchvision model)")
    pc.add_argument("--lbound", type=bounded(float, "--lbound", 0, 1, lo_open=True), default=0.2,
                    help="the lower bound of the smallest reachable model (default 0.2)")
    pc.add_argument("--coupled", default="skip", choices=["skip", "shared"],
                    help="residual-tied channels: left alone (skip) or pruned as one group (shared) (default skip)")
    pc.add_argument("--timeout", type=bounded(float, "--timeout", 0, lo_open=True), default=600.0,
                    help="seconds per model before it is recorded as hanging (default 600)")
    pc.add_argument("--out", required=True, help="folder for coverage.json and coverage.md")
    add_common(pc)
    pc.set_defaults(func=run_coverage)
    from amc.cli import bench_compare, bench_correlation, bench_curves, bench_quality, bench_selection

    bench_quality.register(bsub)
    bench_correlation.register(bsub)
    bench_curves.register(bsub)
    bench_selection.register(bsub)
    bench_compare.register(bsub)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])


def run_prune(args: argparse.Namespace) -> int:
    import torch

    from amc.bench import bench_prune, uniform_quality
    from amc.errors import AmcError

    setup_threads(args)
    spec = spec_from(args)
    if args.trials < 1:
        raise AmcError(f"--trials must be >= 1, got {args.trials}")
    t0 = time.perf_counter()
    problem = spec.build(progress=not args.json)
    setup_s = time.perf_counter() - t0
    pruner, model, splits = problem.pruner, problem.model, problem.splits
    log = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr))
    speed = bench_prune(pruner, model, splits.reward, args.trials, spec.target, spec.seed, log)
    quality = uniform_quality(pruner, model, splits.reward, spec.target)
    res = {"model": problem.model_spec.name, "weights": problem.weights, "dataset": spec.dataset, "spec": spec.to_dict(), "layers": pruner.num_layers,
           "setup_s": setup_s, "feature_cache_bytes": pruner.cache.nbytes if pruner.cache else 0,
           **speed, **quality, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                                         f"torch {torch.__version__}"}
    table = "\n".join([
        f"amc bench prune: {problem.model_spec.name} on {spec.dataset}, {pruner.num_layers} prunable layers, "
        f"{speed['reward_set_size']} reward images, {speed['threads']} threads",
        f"  setup (graph + calibration cache, once per search): {setup_s:.2f} s, "
        f"cache {res['feature_cache_bytes'] / 2**20:.1f} MiB",
        f"  (a) evaluate unpruned model:                 {speed['unpruned_eval_s']:.3f} s",
        f"  (b) random policy + reconstruct + evaluate:  {speed['episode_s']:.3f} s "
        f"(prune+reconstruct {speed['episode_prune_reconstruct_s']:.3f} s, evaluate {speed['episode_eval_s']:.3f} s, "
        f"mean FLOPs ratio {speed['mean_flops_ratio']:.3f})",
        f"  b/a = {speed['ratio_b_over_a']:.2f}",
        f"  uniform @ {spec.target:.2f} FLOPs: reward-set top-1 {quality['uniform_no_reconstruct_reward_top1']:.2f}% "
        f"without reconstruction, "
        + (f"{quality['uniform_reconstruct_reward_top1']:.2f}% with" if "uniform_reconstruct_reward_top1" in quality
           else "(reconstruction off)")
        + f" (base {quality['base_reward_top1']:.2f}%)",
    ])
    emit(res, args.json, table)
    return 0


def run_latency_bench(args: argparse.Namespace) -> int:
    from amc.checkpoint import atomic_write_json
    from amc.cli.common import fresh_out_dir
    from amc.latency_bench import predict_vs_measure

    from amc.latency_bench import nearest_uniform, uniform_ladder
    from amc.policy import load_policy, write_policy

    setup_threads(args)
    spec = spec_from(args, reconstruct=False)
    out = fresh_out_dir(args.out)
    problem = spec.build(progress=not args.json, latency=True)
    pruner = problem.pruner
    extra = [("policy", load_policy(args.policy, pruner, spec.channel_round))] if args.policy else []
    if args.uniform_ladder:
        extra += [(f"uniform-{r:.3f}", c) for r, c in uniform_ladder(pruner.graph.groups, spec.channel_round,
                                                                      spec.lbound)]
    res = predict_vs_measure(pruner, pruner.latency, args.policies, spec.target, lbound=spec.lbound,
                             repeats=args.repeats, seed=args.policy_seed, progress=not args.json,
                             plot=out / "latency.png", extra=extra)
    near = None
    if args.policy and args.uniform_ladder:
        near = nearest_uniform(pruner, res["policies"], res["runtime"], res["batch"], res["threads"],
                               repeats=max(args.repeats, 20))
    if near is not None:
        write_policy(out / "nearest_uniform.json", pruner, near["counts"], label=near["policy"],
                     measured_latency_ratio=near["measured_ratio"])
        res["nearest_uniform"] = {"policy": near["policy"], "measured_ratio": near["measured_ratio"],
                                  "runoff": near["runoff"], "file": str(out / "nearest_uniform.json")}
    if args.per_group:
        from amc.latency_bench import groups_png, per_group_savings

        res["per_group"] = per_group_savings(pruner, pruner.latency, repeats=max(args.repeats, 20))
        groups_png(res["per_group"], out / "groups.png",
                   f"{problem.model_spec.name}, {res['runtime']}, batch {res['batch']}: ")
    res.update(model=problem.model_spec.name, spec=spec.to_dict(), machine=platform.processor() or platform.machine(),
               table_build_seconds=problem.pruner.latency.meta.get("build_seconds"),
               table_from_cache=problem.pruner.latency.from_cache, command="amc " + " ".join(args._argv))
    atomic_write_json(out / "latency.json", res)
    emit(res, args.json,
         f"amc bench latency: {res['model']}, {res['runtime']}, batch {res['batch']}, {res['threads']} thread(s), "
         f"{len(res['policies'])} policies near {spec.target:g}\n"
         f"  base: predicted {res['base_predicted_ms']:.2f} ms, measured {res['base_measured_ms']:.2f} ms\n"
         f"  |predicted - measured| / measured, latency: median {100 * res['median_abs_rel_err']:.1f}%, "
         f"p90 {100 * res['p90_abs_rel_err']:.1f}%, max {100 * res['max_abs_rel_err']:.1f}%\n"
         f"  the same on the ratio to the base: median {100 * res['ratio_median_abs_rel_err']:.1f}%, "
         f"p90 {100 * res['ratio_p90_abs_rel_err']:.1f}%, max {100 * res['ratio_max_abs_rel_err']:.1f}%\n"
         + "".join(f"\n  {r['policy']:16} FLOPs {r['flops_ratio']:.3f}, latency ratio predicted "
                   f"{r['predicted_ratio']:.3f}, measured {r['measured_ratio']:.3f}"
                   for r in res["policies"] if r["policy"] == "policy" or r["policy"].startswith("uniform-"))
         + (f"\n  nearest uniform in measured latency: {near['policy']} -> {out}/nearest_uniform.json"
            f"\n    decided in one run of the policy and the {len(near['runoff']) - 1} nearest, interleaved with "
            "the base: " + ", ".join(f"{n} {r:.3f}" for n, r in near["runoff"].items())
            if near is not None else "")
         + (_per_group_text(res["per_group"]) if "per_group" in res else "")
         + f"\n  wrote {out}/latency.json and latency.png" + (" and groups.png" if "per_group" in res else ""))
    return 0


def _per_group_text(pg: dict) -> str:
    worst = sorted(pg["groups"], key=lambda r: -abs(r["measured_saving"] - r["predicted_saving"]))[:5]
    return (f"\n  each group alone at {pg['ratio']:g}: saving measured vs predicted, correlation "
            f"{pg['correlation']:.2f}; largest gaps:"
            + "".join(f"\n    group {r['group']:3d} ({r['layer']}, {r['channels']} -> {r['kept']}): measured "
                      f"{100 * r['measured_saving']:.1f}%, predicted {100 * r['predicted_saving']:.1f}%" for r in worst))


def _state_save_text(cost: dict) -> str:
    if not cost.get("writes"):
        return "  search state: not saved"
    return (f"  search state ({cost['state_mib']:.2f} MiB): {cost['capture_ms_median']:.1f} ms to capture each "
            f"episode, {cost['write_ms_median']:.1f} ms per write (medians of {cost['captures']} and {cost['writes']})")


def _search_in_child(spec, cfg, run: str) -> tuple[dict, dict, int]:
    """Runs in the child process: the search, its config.json and the child's peak RSS (KiB on Linux)."""
    import resource

    from agents.search import search
    from amc.checkpoint import read_json

    res = search(spec, cfg, run, progress=False)
    return res, read_json(f"{run}/config.json"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_search_bench(args: argparse.Namespace) -> int:
    import multiprocessing as mp
    import shutil
    import tempfile
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path

    setup_threads(args)
    spec = spec_from(args)
    spec = spec.replace(weights=absolute(spec.weights), data_dir=absolute(spec.data_dir))
    cfg = SearchConfig(**{**values_given(args, SearchConfig), "episodes": args.episodes, "warmup": args.warmup},
                       device=args.device, threads=args.threads).validate()
    scratch = None if args.run else Path(tempfile.mkdtemp(prefix="amc-bench-search-"))
    run = Path(args.run) if args.run else scratch / "run"
    try:
        t0 = time.perf_counter()
        # a fresh process, so its peak memory is the search's own (spawn: no forked torch runtime)
        with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
            res, config, maxrss_kib = pool.submit(_search_in_child, spec, cfg, str(run)).result()
        wall = time.perf_counter() - t0
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    out_res = {"model": spec.model, "dataset": spec.dataset, "algo": cfg.algo, "episodes": res["episodes"],
               "layers": config.get("num_layers"), "envs": cfg.envs, "budget": spec.budget, "bn_recal": spec.bn_recal,
               "seconds_per_episode": res["seconds_per_episode"],
               "episodes_per_second": round(res["episodes"] / res["seconds"], 4) if res["seconds"] else None,
               "search_s": res["seconds"], "wall_s": round(wall, 2),
               # the search process's own; with --envs N each worker holds its own copy of the problem
               "peak_rss_mib": round(maxrss_kib / 1024, 1),  # Linux reports KiB
               "feature_cache_mib": round(config.get("feature_cache_bytes", 0) / 2**20, 2),
               "threads": config.get("threads"), "machine": f"{platform.machine()}, python {platform.python_version()}",
               # what keeping the search resumable costs (RUN/state.pt, written every --save-every episodes)
               "state_save": res["state_save"]}
    emit(out_res, args.json,
         f"amc bench search: {spec.model} on {spec.dataset}, {cfg.algo}, {res['episodes']} episodes of "
         f"{out_res['layers']} steps, {out_res['threads']} threads"
         + (f", --bn-recal {spec.bn_recal}" if spec.bn_recal else "")
         + (f" per worker, {cfg.envs} envs\n" if cfg.envs > 1 else "\n") +
         f"  {res['seconds_per_episode']:.3f} s per episode ({res['seconds']:.1f} s searching, "
         f"{wall:.1f} s with start-up and set-up)\n"
         f"  peak memory (RSS) {out_res['peak_rss_mib']:.0f} MiB, least-squares cache "
         f"{out_res['feature_cache_mib']:.1f} MiB\n" + _state_save_text(res["state_save"]))
    return 0


def run_coverage(args: argparse.Namespace) -> int:
    from amc.checkpoint import atomic_write_bytes, atomic_write_json
    from amc.cli.common import fresh_out_dir
    from amc.coverage import check_model_isolated, coverage_table, torchvision_models
    from amc.errors import AmcError

    setup_threads(args)
    models = torchvision_models(int(args.max_params * 1e6))
    if args.models:
        from amc.flops import count_params
        from amc.models import ZOO, ModelSpec, build_model

        known = {m[0] for m in torchvision_models()} | set(ZOO)
        unknown = [m for m in args.models if m not in known]
        if unknown:
            raise AmcError(f"not a torchvision classification model or a zoo name: {unknown[0]}")
        # zoo models are CIFAR-style: 32 pixels
        models = [m for m in models if m[0] in args.models] + [
            (m, count_params(build_model(ModelSpec(m, 3, 10))), 32) for m in args.models if m in ZOO]
        if not models:
            raise AmcError(f"every model named is over --max-params {args.max_params:g}M")
    out = fresh_out_dir(args.out)
    rows = []
    for i, (name, params, size) in enumerate(models):
        if not args.json:
            print(f"[{i + 1}/{len(models)}] {name} at {size}x{size}", file=sys.stderr)
        rows.append({**check_model_isolated(name, size, args.lbound, args.coupled, args.timeout), "params": params})
        atomic_write_json(out / "coverage.json", {"rows": rows, "max_params_m": args.max_params,
                                                   "lbound": args.lbound, "coupled": args.coupled})
    table = coverage_table(rows)
    atomic_write_bytes(out / "coverage.md", (table + "\n").encode())
    res = {"rows": rows, "models": len(rows), "pruned_end_to_end": sum(bool(r["parity"] and r["onnx"]) for r in rows),
           "out": str(out)}
    emit(res, args.json, table + f"\n{res['pruned_end_to_end']} of {len(rows)} models pruned end to end")
    return 0

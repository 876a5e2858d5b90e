"""``amc latency``: the latency table of a model in a target runtime, and where its time goes."""
from __future__ import annotations

import argparse

from amc.cli.common import add_common, add_latency_target, emit, setup_threads, spec_from


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("latency", help="build (or load) a model's latency table; where its time goes",
                       description="Measures, in the target runtime (--runtime, --latency-batch, --latency-threads), "
                                   "each prunable layer with the BN and activation that follow it over a grid of "
                                   "kept input and output channels, and the rest of the model as one constant. "
                                   "The table is made monotone (a running maximum along each axis) and cached on "
                                   "disk under a fingerprint of the CPU, runtime, threads, batch and layer shapes. "
                                   "Prints each layer's share of the latency next to its share of the FLOPs, and "
                                   "the predicted and measured latency of the whole model.")
    add_latency_target(p)
    add_common(p)
    p.add_argument("--rebuild", action="store_true", help="measure again even if a cached table exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc.pruner import ChannelPruner

    setup_threads(args)
    spec = spec_from(args)
    splits = spec.load_splits()
    model, model_spec, _ = spec.load_model(splits)
    pruner = ChannelPruner(model.eval(), splits.train.shape, None, coupled=spec.coupled)  # the table reads counts only
    lat = spec.latency_model(pruner, progress=not args.json, rebuild=args.rebuild)
    parts = lat.breakdown()
    res = {"model": model_spec.name, "runtime": spec.runtime, "batch": spec.latency_batch,
           "threads": spec.latency_threads, "channel_round": spec.channel_round,
           "predicted_ms": parts["predicted_ms"], "measured_ms": lat.meta.get("measured_full_ms"),
           "remainder_ms": parts["remainder_ms"], "remainder_share": parts["remainder_share"],
           "layers": parts["layers"], "cache_file": str(lat.cache_file), "from_cache": lat.from_cache,
           "fingerprint_id": lat.meta.get("fingerprint_id"), "build_seconds": lat.meta.get("build_seconds"),
           "fit": {k: lat.meta.get(k) for k in ("tables_scale", "tables_shift", "weights_full_mib",
                                                "weights_ms_per_mib")}}
    lines = [f"{model_spec.name}: latency in {spec.runtime}, batch {spec.latency_batch}, "
             f"{spec.latency_threads} thread(s); table {'loaded from' if lat.from_cache else 'built into'} "
             f"{lat.cache_file}",
             f"{'layer':28} {'kind':7} {'cin':>5} {'cout':>5} {'ms':>8} {'latency':>8} {'FLOPs':>7}"]
    for r in parts["layers"]:
        ms = "-" if r["ms"] is None else f"{r['ms']:.3f}"
        share = "-" if r["latency_share"] is None else f"{100 * r['latency_share']:.1f}%"
        lines.append(f"{r['name'][:28]:28} {r['kind'][:7]:7} {r['cin']:5d} {r['cout']:5d} {ms:>8} {share:>8} "
                     f"{100 * r['flops_share']:6.1f}%")
    lines.append(f"{'rest (stem, pooling, adds, ...)':48} {parts['remainder_ms']:8.3f} "
                 f"{100 * parts['remainder_share']:7.1f}%")
    measured = res["measured_ms"]
    lines.append(f"whole model: predicted {res['predicted_ms']:.3f} ms, measured "
                 f"{'?' if measured is None else f'{measured:.3f}'} ms (when the table was built)")
    fit = res["fit"]
    if fit["tables_scale"] is not None:
        cost = (fit["weights_ms_per_mib"] or 0.0) * (fit["weights_full_mib"] or 0.0)
        lines.append(f"fitted on whole models: tables x {fit['tables_scale']:.3f}, less {fit['tables_shift'] or 0:.0%} "
                     f"of each table's smallest entry; weights {fit['weights_full_mib'] or 0:.2f} MiB at "
                     f"{fit['weights_ms_per_mib'] or 0:.4f} ms/MiB ({cost:.3f} ms, included in the layers' ms)")
    emit(res, args.json, "\n".join(lines))
    return 0

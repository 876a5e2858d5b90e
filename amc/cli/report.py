"""``amc report``: the results table of a search run: base, uniform and AMC, side by side.

Reward-set and test top-1, FLOPs and params of the unpruned model, of the uniform policy at
the search's budget, and of the search's best policy, all pruned by one pruner (same
calibration, same reconstruction; :func:`amc.api.compare`). This is a final report: the test
set is read here, after the search chose its policy on the reward set.
"""
from __future__ import annotations

import argparse

from amc.cli.common import add_common, emit, setup_threads
from amc.options import bounded


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="results table of a search: base vs. uniform vs. AMC",
                       description="Prune with the uniform policy at the search's budget and with the search's "
                                   "best policy, then report reward-set and test top-1, FLOPs and params next to "
                                   "the unpruned model (no fine-tuning). With --latency (on by default for a "
                                   "latency-budget run), also the predicted and the measured latency ratio of each, "
                                   "and a row for RUN/verified_policy.json where --verify-top kept another policy.")
    p.add_argument("--run", required=True, help="an amc search run folder")
    p.add_argument("--policy", default=None, help="a policy file instead of RUN/best_policy.json")
    p.add_argument("--data-dir", default=None, help="where the data lies, if not where the search found it")
    p.add_argument("--latency", action=argparse.BooleanOptionalAction, default=None,
                   help="add predicted and measured latency ratios, timed interleaved in the run's latency "
                        "target (runtime, batch, threads; the latency table is built or loaded from the cache) "
                        "(default: on for a --budget latency run)")
    p.add_argument("--repeats", type=bounded(int, "--repeats", 1), default=20,
                   help="timing rounds per model with --latency (default 20)")
    p.add_argument("--int8", default=None, metavar="QFOLDER",
                   help="add a row for the int8 model in QFOLDER: the output of amc quantize on this run's best "
                        "policy, usually after amc prune and amc finetune (its top-1 is after fine-tuning and "
                        "quantization, run in onnxruntime; its FLOPs must match the AMC row's)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc.api import compare

    setup_threads(args)
    res = compare(args.run, args.policy, args.data_dir, args.device, progress=not args.json, latency=args.latency,
                  repeats=args.repeats)
    if args.int8:
        res["rows"].append(_int8_row(args.int8, res["rows"][-1]))
    lat = "latency" in res
    lines = [f"{res['model']} on {res['dataset']}, {res['layers']} prunable layers, no fine-tuning "
             f"(reconstruction {'on' if res['reconstruct'] else 'off'}), {res['budget']} budget {res['target']:g}",
             f"{'':14} {'reward top-1':>12} {'test top-1':>10} {'MFLOPs':>8} {'FLOPs':>6} {'params':>9} {'params':>6}"
             + (f" {'latency pred.':>13} {'measured':>8} {'ms':>8}" if lat else "")]
    for r in res["rows"]:
        timed = lat and "measured_ms" in r
        lines.append(f"{r['name']:14} {r['reward_top1']:11.2f}% {r['test_top1']:9.2f}% {r['flops'] / 1e6:8.2f} "
                     f"{r['flops_ratio']:6.3f} {r['params']:9d} {r['params_ratio']:6.3f}"
                     + (f" {r['predicted_latency_ratio']:13.3f} {r['measured_latency_ratio']:8.3f} "
                        f"{r['measured_ms']:8.2f}" if timed else f" {'-':>13} {'-':>8} {'-':>8}" if lat else ""))
    if lat:
        t = res["latency"]
        lines.append(f"latency: {t['runtime']}, batch {t['batch']}, {t['threads']} thread(s), ratios to the base; "
                     f"measured interleaved, median of {args.repeats}")
    if args.int8:
        q = res["rows"][-1]
        lines.append(f"AMC+int8: {q['source']} (fine-tuned as the user chose, then quantized; top-1 in onnxruntime), "
                     f"{q['file_bytes'] / 1024:.1f} KiB int8 ONNX")
    emit(res, args.json, "\n".join(lines))
    return 0


def _int8_row(folder: str, amc_row: dict) -> dict:
    """The report row of an ``amc quantize`` folder made from the run's best policy."""
    from pathlib import Path

    from amc.checkpoint import read_json
    from amc.errors import AmcError
    from amc.quantize import INT8_FILE

    path = Path(folder)
    meta = read_json(path / "model.json") if (path / "model.json").is_file() else None
    if not isinstance(meta, dict) or meta.get("kind") != "quantized":
        raise AmcError(f"--int8 {folder} is not a folder written by amc quantize")
    if meta.get("flops") != amc_row["flops"]:
        raise AmcError(f"--int8 {folder} was not made from this run's best policy ({meta.get('flops')} FLOPs, the "
                       f"policy has {amc_row['flops']})")
    return {"name": "AMC+int8", "reward_top1": meta["reward_top1"], "test_top1": meta["test_top1"],
            "flops": amc_row["flops"], "params": amc_row["params"], "flops_ratio": amc_row["flops_ratio"],
            "params_ratio": amc_row["params_ratio"], "file_bytes": (path / INT8_FILE).stat().st_size,
            "source": str(path)}

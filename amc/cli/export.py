"""``amc export``: a search's best policy, or a slim checkpoint, as safetensors + JSON + ONNX."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from amc.cli.common import add_common, emit, fresh_out_dir, setup_threads
from amc.errors import AmcError

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a slim model: safetensors + JSON + ONNX (checked with onnxruntime)",
                       description="Export a slim model as model.safetensors + model.json (rebuilt by "
                                   "amc.load_pruned, without pickle) and model.onnx (runs without amc or torch; "
                                   "checked against PyTorch with onnxruntime). --run prunes with a search run's "
                                   "best policy and its recorded settings, as amc prune does; --checkpoint "
                                   "re-exports the output of amc prune or amc finetune.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", default=None, help="an amc search run folder (config.json + best_policy.json)")
    src.add_argument("--checkpoint", default=None, help="a folder written by amc prune or amc finetune")
    p.add_argument("--policy", default=None, help="with --run: this policy file instead of RUN/best_policy.json")
    p.add_argument("--out", required=True, help="output folder for model.safetensors, model.json and model.onnx")
    p.add_argument("--data-dir", default=None, help="with --run: where the data lies, if not where the search found it")
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"],
                   help="torch's ONNX exporter: dynamo (torch.export, the default) or torchscript (legacy, "
                        "faster); if dynamo fails, torchscript is tried")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc.checkpoint import atomic_write_json, save_weights
    from amc.export import check_onnx, export_onnx
    from amc.pruned import load_checkpoint
    from amc.train import resolve_device

    setup_threads(args)
    if args.policy and not args.run:
        raise AmcError("--policy goes with --run (a checkpoint already holds its policy)")
    if args.data_dir and not args.run:
        raise AmcError("--data-dir goes with --run (exporting a checkpoint needs no data)")
    resolve_device(args.device)
    if args.run:
        from amc.api import prune, read_run

        run = read_run(args.run, args.policy, args.data_dir)
        out = fresh_out_dir(args.out)
        model, meta = prune(run.spec, str(run.policy), device=args.device, progress=not args.json)
        meta["kind"] = "exported"
        meta["source"] = run.source
    else:
        src = Path(args.checkpoint)
        model, meta = load_checkpoint(src)
        out = fresh_out_dir(args.out)
        meta = {**meta, "kind": "exported",
                "source": {"checkpoint": str(src.resolve()), "kind": meta.get("kind"),
                           **({"source": meta["source"]} if "source" in meta else {})}}
    try:
        shape = tuple(int(d) for d in meta["input_shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise AmcError("model.json lacks a valid input_shape") from e

    model = model.cpu().eval()
    save_weights(out / "model.safetensors", model)
    try:
        onnx_record = export_onnx(model, shape, out / "model.onnx", args.exporter)
    except AmcError as e:
        if args.exporter != "dynamo":
            raise
        sys.stderr.write(f"note: {e}; trying the torchscript exporter\n")
        onnx_record = export_onnx(model, shape, out / "model.onnx", "torchscript")
    check = check_onnx(out / "model.onnx", model, shape)
    if not check["passed"]:
        allowed = check["atol"] + check["rtol"] * check["output_scale"]
        raise AmcError(f"model.onnx differs from the PyTorch model by up to {check['max_abs_diff']:.3g} "
                       f"(allowed {allowed:.3g}); model.json not written")
    onnx_record["check"] = check
    split = meta.get("split") or {}
    # what a consumer of the ONNX file needs besides the file: the input normalisation
    onnx_record["normalize"] = {"mean": split.get("mean"), "std": split.get("std")}
    meta["onnx"] = onnx_record
    atomic_write_json(out / "model.json", meta)  # last: a folder with model.json is complete

    res: dict[str, Any] = {k: meta.get(k) for k in ("flops", "params", "flops_ratio", "params_ratio",
                                                    "reward_top1", "test_top1")}
    res.update(out=str(out), onnx=str(out / "model.onnx"), exporter=onnx_record["exporter"],
               opset=onnx_record["opset"], onnx_max_abs_diff=check["max_abs_diff"], onnx_atol=check["atol"],
               onnx_rtol=check["rtol"], onnx_output_scale=check["output_scale"],
               source=meta["source"])
    if "search_reward_top1" in meta.get("source", {}):
        res["search_reward_top1"] = meta["source"]["search_reward_top1"]
    emit(res, args.json,
         f"exported {out}: model.safetensors, model.json, model.onnx ({onnx_record['exporter']} exporter, opset "
         f"{onnx_record['opset']}; onnxruntime matches PyTorch within {check['max_abs_diff']:.2e} on logits "
         f"up to {check['output_scale']:.3g})\nFLOPs {_ratio(meta.get('flops_ratio'))}, params "
         f"{_ratio(meta.get('params_ratio'))} of the original; reward-set top-1 {_pct(meta.get('reward_top1'))}, "
         f"test top-1 {_pct(meta.get('test_top1'))}")
    return 0


def _ratio(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "?"


def _pct(v: Any) -> str:
    return f"{v:.2f}%" if isinstance(v, (int, float)) else "?"

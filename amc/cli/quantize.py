"""``amc quantize``: a slim (or unpruned) model as a calibrated int8 ONNX model, measured beside fp32."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from amc.cli.common import add_common, add_spec, emit, fresh_out_dir, setup_threads, spec_from
from amc.errors import AmcError
from amc.options import bounded, seed_int, values_given
from amc.spec import DATA, MODEL, PruneSpec


def register(sub: argparse._SubParsersAction) -> None:
    from amc.quantize import CALIBRATION_METHODS, FORMATS

    p = sub.add_parser("quantize", help="post-training int8 quantization (onnxruntime), measured beside fp32",
                       description="Export a checkpoint (from amc prune, finetune or export; or an unpruned model "
                                   "given by --model/--weights) to ONNX and quantize it with onnxruntime's static "
                                   "quantization: int8 weights (per channel by default) and int8 activations "
                                   "calibrated on images of the calibration split (the training split minus the "
                                   "reward set; never reward-set or test images). Writes OUT/model.int8.onnx, "
                                   "OUT/model.fp32.onnx and OUT/model.json, then prints file size, test and "
                                   "reward-set top-1 (run in onnxruntime) and batch-1/batch-64 latency (onnxruntime, "
                                   "interleaved) of the fp32 and the int8 model side by side. amc eval --checkpoint "
                                   "OUT compares the int8 model with the unpruned fp32 base.")
    p.add_argument("--checkpoint", default=None,
                   help="a folder from amc prune, finetune, export or train (default: the model given by --model)")
    add_spec(p, MODEL, DATA)
    add_common(p)
    p.add_argument("--out", required=True, help="output folder for model.int8.onnx, model.fp32.onnx and model.json")
    p.add_argument("--calib-batches", type=bounded(int, "--calib-batches", 1), default=8,
                   help="calibration batches (default 8)")
    p.add_argument("--calib-batch-size", type=bounded(int, "--calib-batch-size", 1), default=32,
                   help="images per calibration batch (default 32)")
    p.add_argument("--calibration", default="minmax", choices=list(CALIBRATION_METHODS),
                   help="how activation ranges are set from the calibration images: minmax (the range seen), "
                        "entropy (KL-divergence threshold), percentile (99.999th percentile) (default minmax)")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                   help="one weight scale per output channel (--no-per-channel: one per tensor) (default on)")
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                   help="quantize weights to 7 bits, which keeps CPUs without int8 dot products (no VNNI) from "
                        "overflowing 16-bit sums; default: on exactly where this CPU lacks them")
    p.add_argument("--format", default="qoperator", choices=list(FORMATS),
                   help="qoperator (QLinearConv and friends, uint8 activations: the smaller file, and the faster "
                        "one on the CPUs measured) or qdq (QuantizeLinear/DequantizeLinear pairs around float ops, "
                        "int8 activations: the form other execution providers such as TensorRT read) "
                        "(default qoperator)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the calibration draw (default 0)")
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"],
                   help="torch's ONNX exporter (default dynamo; torchscript is tried if it fails)")
    p.add_argument("--repeats", type=bounded(int, "--repeats", 1), default=20,
                   help="timed rounds per model and batch size (default 20)")
    p.add_argument("--batch-sizes", type=bounded(int, "--batch-sizes", 1), nargs="+", default=[1, 64],
                   help="batch sizes timed (default 1 64)")
    p.set_defaults(func=run)


def _source(args: argparse.Namespace) -> tuple[Any, dict, Any]:
    """The model to quantize, the record it carries into model.json, and its data splits."""
    from amc.checkpoint import base_weights_entry, load_state_dict, load_weights_into
    from amc.models import ModelSpec, build_model
    from amc.pruned import load_checkpoint, load_recorded_splits

    if args.checkpoint is None:
        spec = spec_from(args)
        splits = spec.load_splits()
        model, model_spec, weights = spec.load_model(splits)
        meta = {"kind": "base", "model": model_spec.to_dict(), "dataset": spec.dataset, "split": splits.record,
                "input_shape": list(splits.train.shape), "weights": str(Path(weights).resolve()) if weights else None}
        meta["base"] = base_weights_entry(weights)
        return model, meta, splits
    import dataclasses

    spec_fields = {f.name for f in dataclasses.fields(PruneSpec) if f.metadata.get("group") in (MODEL, DATA)}
    given = (set(values_given(args, PruneSpec)) & spec_fields) - {"data_dir"}
    if given:
        raise AmcError(f"--checkpoint carries its model and data; drop --{sorted(given)[0].replace('_', '-')}")
    folder = Path(args.checkpoint)
    if not (folder / "model.json").is_file():
        raise AmcError(f"{folder} holds no model.json (a folder from amc prune, finetune, export or train)")
    from amc.checkpoint import read_json

    meta = read_json(folder / "model.json")
    if not isinstance(meta, dict):
        raise AmcError(f"{folder / 'model.json'} is not a JSON object")
    if meta.get("kind") == "quantized":
        raise AmcError(f"{folder} is already quantized; pass the checkpoint it was made from")
    if meta.get("kind") == "base" and "channels" not in meta:  # amc train's output: an unpruned model
        model = build_model(ModelSpec.from_dict(meta["model"]))
        load_weights_into(model, load_state_dict(folder / "model.safetensors"), source=f"weights in {folder}")
        splits = load_recorded_splits(meta, getattr(args, "data_dir", None))
        weights = str((folder / "model.safetensors").resolve())
        meta = {**meta, "input_shape": list(splits.train.shape), "base": base_weights_entry(weights)}
    else:
        model, meta = load_checkpoint(folder)
        splits = load_recorded_splits(meta, getattr(args, "data_dir", None))
    return model.eval(), {**meta, "source": {"checkpoint": str(folder.resolve()), "kind": meta.get("kind")}}, splits


def run(args: argparse.Namespace) -> int:
    import torch

    from amc.checkpoint import atomic_write_json
    from amc.latency_runtime import OrtModule, end_to_end
    from amc.quantize import FP32_FILE, INT8_FILE, ort_top1, quantize_model

    setup_threads(args)
    model, meta, splits = _source(args)
    out = fresh_out_dir(args.out)
    shape = tuple(int(d) for d in meta["input_shape"])
    threads = torch.get_num_threads()
    record = quantize_model(model, shape, splits, out, args.calib_batches, args.calib_batch_size, args.seed,
                            args.format, args.per_channel, args.calibration, args.exporter, args.reduce_range)
    figures: dict[str, dict[str, Any]] = {}
    preds = {}
    for name, file in (("fp32", FP32_FILE), ("int8", INT8_FILE)):
        test, preds[name] = ort_top1(out / file, splits.test, threads)
        reward, _ = ort_top1(out / file, splits.reward, threads)
        figures[name] = {"file": file, "file_bytes": (out / file).stat().st_size, "test_top1": test,
                         "reward_top1": reward}
    agreement = float(100.0 * (preds["fp32"] == preds["int8"]).mean())
    for b in args.batch_sizes:
        timed = end_to_end({n: OrtModule.from_file(out / f["file"], threads) for n, f in figures.items()},
                           shape, b, "ort", threads, args.repeats)
        for n in figures:
            figures[n][f"latency_ms_b{b}"] = timed[n].median_ms
    record.update(fp32=figures["fp32"], int8=figures["int8"], test_agreement=agreement, threads=threads,
                  repeats=args.repeats)
    meta = {**meta, "kind": "quantized", "quantization": record, "test_top1": figures["int8"]["test_top1"],
            "reward_top1": figures["int8"]["reward_top1"], "command": "amc " + " ".join(getattr(args, "_argv", []))}
    atomic_write_json(out / "model.json", meta)  # last: a folder with model.json is complete
    if not record["int8_dot_instructions"]:
        sys.stderr.write("warning: this CPU has no int8 dot-product instructions (VNNI, AMX or the Arm dot product); "
                         "onnxruntime emulates int8 GEMMs here, so the int8 model may run slower than fp32\n")
    res = {"out": str(out), "format": args.format, "per_channel": args.per_channel,
           "reduce_range": record["reduce_range"],
           "calibration": record["calibration"], "fp32": figures["fp32"], "int8": figures["int8"],
           "test_agreement": agreement, "size_ratio": figures["int8"]["file_bytes"] / figures["fp32"]["file_bytes"],
           "int8_dot_instructions": record["int8_dot_instructions"], "threads": threads}
    for b in args.batch_sizes:
        res[f"speedup_b{b}"] = figures["fp32"][f"latency_ms_b{b}"] / figures["int8"][f"latency_ms_b{b}"]
    emit(res, args.json, _table(res, args.batch_sizes))
    return 0


def _table(r: dict, batch_sizes: list[int]) -> str:
    f, q = r["fp32"], r["int8"]
    rows = [("", "fp32 ONNX", "int8 ONNX", "int8 / fp32"),
            ("file", f"{f['file_bytes'] / 1024:.1f} KiB", f"{q['file_bytes'] / 1024:.1f} KiB", f"{r['size_ratio']:.3f}"),
            ("test top-1", f"{f['test_top1']:.2f}%", f"{q['test_top1']:.2f}%",
             f"{q['test_top1'] - f['test_top1']:+.2f} pt"),
            ("reward top-1", f"{f['reward_top1']:.2f}%", f"{q['reward_top1']:.2f}%",
             f"{q['reward_top1'] - f['reward_top1']:+.2f} pt")]
    for b in batch_sizes:
        rows.append((f"latency b{b}", f"{f[f'latency_ms_b{b}']:.2f} ms", f"{q[f'latency_ms_b{b}']:.2f} ms",
                     f"speedup {r[f'speedup_b{b}']:.2f}x"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"wrote {r['out']}/model.int8.onnx ({r['format']}, weights "
             f"{'per channel' if r['per_channel'] else 'per tensor'}, {r['calibration']['images']} calibration "
             f"images, {r['calibration']['method']})"]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
              for row in rows]
    dot = ", ".join(r["int8_dot_instructions"]) or "none"
    lines.append(f"top-1 in onnxruntime; the two models agree on {r['test_agreement']:.2f}% of test images; latency: "
                 f"onnxruntime CPU, {r['threads']} thread(s), interleaved; int8 dot-product instructions: {dot}")
    return "\n".join(lines)

"""Slim checkpoints: save a pruned model, and rebuild it from its folder without pickle.

``model.json`` stores the base model spec, the input shape, the coupling mode and the
kept channels per group; rebuilding builds the base architecture, slices it to those
counts and loads ``model.safetensors`` strictly. Nothing in the folder is ever unpickled.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from amc.checkpoint import find_base_weights, load_state_dict, load_weights_into, read_json, save_checkpoint
from amc.errors import AmcError
from amc.graph import build_layer_graph
from amc.models import ModelSpec, build_model
from amc.selection import top_k
from amc.surgery import slim_model

if TYPE_CHECKING:
    from amc.data import DataSplits


def rebuild_pruned(meta: dict) -> nn.Module:
    """The slim architecture described by a ``model.json`` (weights uninitialised)."""
    try:
        spec = ModelSpec.from_dict(meta["model"])
        input_shape = tuple(int(v) for v in meta["input_shape"])
        coupled = meta.get("coupled", "skip")
        channels = meta.get("channels", [])
        if len(input_shape) != 3 or not isinstance(channels, list):
            raise ValueError
    except (KeyError, TypeError, ValueError) as e:
        raise AmcError("model.json lacks a valid model, input_shape or channels entry") from e
    base = build_model(spec)
    if not channels:
        return base
    graph = build_layer_graph(base, input_shape, coupled)
    if len(channels) != len(graph.groups):
        raise AmcError(f"model.json lists {len(channels)} pruned layers but {spec.name} has {len(graph.groups)}")
    keep = []
    for g, c in zip(graph.groups, channels):
        if not isinstance(c, dict) or c.get("layer") != g.layer or c.get("channels") != g.channels:
            raise AmcError(f"model.json layer {c.get('layer') if isinstance(c, dict) else c!r} does not match "
                           f"{spec.name}'s layer {g.layer} ({g.channels} channels)")
        kept = c.get("kept")
        if not isinstance(kept, int) or not (1 <= kept <= g.channels):
            raise AmcError(f"model.json: layer {g.layer}: kept must be an integer in [1, {g.channels}]")
        if kept % g.unit:
            raise AmcError(f"model.json: layer {g.layer}: kept must be a multiple of {g.unit} (its grouped convs)")
        keep.append(top_k(torch.zeros(g.channels), kept, g.unit))  # the shapes only: equal per block
    return slim_model(base, graph, keep)


def kept_channels(meta: dict) -> list[int]:
    """The channels a ``model.json`` keeps per pruned layer, in layer order (none for a base model)."""
    return [c.get("kept") for c in meta.get("channels") or [] if isinstance(c, dict)]


def rebuild_architecture(meta: dict) -> nn.Module:
    """The (untrained) model a ``model.json`` describes: slim when it records kept channels,
    else the unpruned model of its spec."""
    if "channels" in meta:
        return rebuild_pruned(meta)
    from amc.models import ModelSpec, build_model

    return build_model(ModelSpec.from_dict(meta["model"]))


def load_pruned(path: str | Path) -> nn.Module:
    """Rebuild the model saved in checkpoint folder ``path`` (from prune, finetune or export)."""
    model, _ = load_checkpoint(path)
    return model


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """The model and the metadata of a checkpoint folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise AmcError(f"checkpoint folder not found: {folder}")
    meta = read_json(folder / "model.json")
    if not isinstance(meta, dict):
        raise AmcError(f"{folder / 'model.json'} is not a JSON object")
    if meta.get("kind") == "base" and "channels" not in meta:
        raise AmcError(f"{folder} holds an unpruned model from amc train, not a slim checkpoint "
                       f"(prune it first: amc prune --weights {folder / 'model.safetensors'} ...)")
    model = rebuild_pruned(meta)
    load_weights_into(model, load_state_dict(folder / "model.safetensors"), source=f"weights in {folder}")
    return model.eval(), meta


def save_pruned(out_dir: str | Path, model: nn.Module, meta: dict) -> Path:
    """Write a slim checkpoint; ``meta`` must hold model, input_shape, coupled and channels."""
    for key in ("model", "input_shape", "channels"):
        if key not in meta:
            raise ValueError(f"pruned checkpoint metadata needs {key!r}")
    return save_checkpoint(out_dir, model, meta)


def load_recorded_splits(meta: dict, data_dir: str | None = None, check_overlap: bool = False,
                         allow_train_overlap: bool = False) -> DataSplits:
    """The data splits a checkpoint was made with: same dataset, split seed, reward-set size and
    normalisation, so fine-tuning selects on the same held-out reward set (docs/method.md#data-splits).

    A reward set that differs from the recorded one (other data under ``data_dir``) is refused.
    ``check_overlap``: also refuse a reward set that holds images the base model was trained on
    (:mod:`amc.overlap`), unless ``allow_train_overlap`` or the checkpoint's spec allowed it.
    """
    from amc.data import load_splits

    record = meta.get("split")
    dataset = meta.get("dataset") or (record or {}).get("dataset")
    try:
        seed, size = int(record["split_seed"]), int(record["reward_set_size"])
        mean, std = record.get("mean"), record.get("std")
        image_size = int(meta["input_shape"][-1])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise AmcError("model.json lacks the data split record (dataset, split_seed, reward_set_size)") from e
    if not isinstance(dataset, str):
        raise AmcError("model.json lacks the dataset name")
    splits = load_splits(dataset, data_dir, seed, size, mean, std, image_size)
    want = record.get("reward_indices_sha256")
    if want and splits.record.get("reward_indices_sha256") != want:
        raise AmcError(f"the {dataset} data found here gives a different reward set than the checkpoint "
                       "recorded (other data or another split); pass the original --data-dir")
    if check_overlap:
        from amc.errors import warn_once
        from amc.overlap import check_reward_set

        base = meta.get("base") if isinstance(meta.get("base"), dict) else {}
        spec = meta.get("spec") if isinstance(meta.get("spec"), dict) else {}
        allow = allow_train_overlap or spec.get("allow_train_overlap") is True
        weights, found = base.get("weights"), find_base_weights(base)
        if isinstance(weights, str) and found is None:
            warn_once(f"the base weights {weights} are missing; the reward set is not checked for the images "
                      "the base model was trained on")
        else:
            check_reward_set(splits, str(found) if found else None, allow)
    return splits

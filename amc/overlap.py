"""Reward sets that cannot leak: never score a model on images it was trained on.

A base model is trained on its dataset's training split minus the reward set it held out
(``--split-seed``, ``--reward-set-size``), and its weights carry a record of that split:
``amc train`` writes it into ``model.json``, and every shipped model's ``.json`` holds it.
Scoring that model on another reward set (another seed, or more images) would score it on
images it was trained on, with accuracies that look better than they are: the flaw of the
official code, whose reward set scored 98.46% against 92.82% on the test set.

:func:`check_reward_set` rebuilds, from the record, the exact reward indices the model held
out (checking them against the recorded hash) and counts the images of this reward set that
are not among them. Any is refused, unless ``allow`` (``--allow-train-overlap``), which is
then recorded in the outputs. A smaller reward set of the same seed is a subset of the
held-out one, and passes. Weights that should carry a record (the shipped ones, or the
output of ``amc train``) and lack one are refused; other weights with no record get one
warning line on stderr.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from amc.checkpoint import WEIGHTS_DIR, read_json
from amc.data import DataSplits, indices_sha256, reward_indices
from amc.errors import AmcError, warn_once

FLAG = "--allow-train-overlap"


def record_of(weights: str | Path) -> tuple[Path | None, dict | None]:
    """The JSON beside ``weights`` that records how they were trained, and its content.

    ``NAME.json`` beside ``NAME.safetensors`` (the shipped weights), or ``model.json``
    beside ``model.safetensors`` (``amc train``'s output folder); (None, None) when there is
    none. A JSON that is not a base model's record (no ``"kind": "base"``) does not count.
    """
    path = Path(weights)
    candidates = [path.with_suffix(".json")]
    if path.name == "model.safetensors":
        candidates.append(path.parent / "model.json")
    for c in candidates:
        if c.is_file():
            meta = read_json(c)
            if isinstance(meta, dict) and meta.get("kind") == "base":
                return c, meta
    return None, None


def _shipped(weights: Path) -> bool:
    try:
        return weights.resolve().is_relative_to(WEIGHTS_DIR.resolve())
    except OSError:
        return False


def _held_out(split: Any) -> tuple[str, int, int, str] | None:
    """(dataset, split seed, reward-set size, hash) of a split record, None when incomplete."""
    if not isinstance(split, dict):
        return None
    dataset, seed, size, digest = (split.get(k) for k in ("dataset", "split_seed", "reward_set_size",
                                                           "reward_indices_sha256"))
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (seed, size))
    if not (isinstance(dataset, str) and ints and isinstance(digest, str) and size > 0):
        return None
    return dataset, seed, size, digest


def check_reward_set(splits: DataSplits, weights: str | Path | None, allow: bool = False) -> int | None:
    """Refuse a reward set that holds images the model in ``weights`` was trained on.

    Returns how many images of ``splits``' reward set the model was trained on (0 for a
    subset of its held-out set), or None when that cannot be known (random weights, no
    record, other data); the count is also written into ``splits.record["train_overlap"]``,
    so every output that records the split records it.

    Raises:
        AmcError: the reward set overlaps the model's training images and ``allow`` is off,
            or weights that should carry a split record do not.
    """
    if weights is None:
        return None  # a random initialisation was trained on nothing
    weights = Path(weights)
    where, meta = record_of(weights)
    held = _held_out(meta.get("split")) if meta is not None else None
    if held is None:
        if _shipped(weights) or meta is not None:
            what = f"the shipped weights {weights.name}" if _shipped(weights) else f"{where}"
            problem = (f"{what} lack the record of the data split they were trained with (split_seed, "
                       f"reward_set_size, reward_indices_sha256), so the reward set cannot be checked for "
                       f"training images")
            if not allow:
                raise AmcError(f"{problem}; pass {FLAG} to score on it anyway")
            warn_once(f"{problem} ({FLAG})")
            return None
        warn_once(f"weights {weights} carry no record of the data split they were trained with; the reward set "
                  f"is not checked for their training images (amc train writes one: model.json)")
        return None

    dataset, seed, size, digest = held
    here = splits.record
    if dataset != here.get("dataset"):
        warn_once(f"weights {weights.name} were trained on {dataset}, not {here.get('dataset')}; the reward set "
                  "is not checked for their training images")
        return None
    index = splits.reward_index
    n = int(here.get("train_size", 0)) + int(here.get("reward_set_size", 0))
    if index is None or not 0 < size < n or indices_sha256(reward_indices(n, seed, size)) != digest:
        warn_once(f"the {dataset} data here does not give the reward set weights {weights.name} held out "
                  f"(--split-seed {seed} --reward-set-size {size}; other data, {n} training images here); the "
                  "reward set is not checked for their training images")
        return None
    overlap = int(np.setdiff1d(index, reward_indices(n, seed, size), assume_unique=True).size)
    here["train_overlap"] = overlap
    if overlap:
        mine = f"--split-seed {here.get('split_seed')} --reward-set-size {here.get('reward_set_size')}"
        problem = (f"the reward set ({mine}) holds {overlap} images the base model was trained on (weights "
                   f"{weights.name} held out the reward set of --split-seed {seed} --reward-set-size {size})")
        if not allow:
            raise AmcError(f"{problem}; use that split (or a smaller --reward-set-size with --split-seed {seed}), "
                           f"or pass {FLAG} to score on them anyway")
        warn_once(f"{problem}; its accuracies are optimistic ({FLAG})")
    return overlap

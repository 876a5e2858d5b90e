"""A search's run folder: making it, its ``config.json``, and its result.

The folder holds ``config.json`` (written once, before the first episode), ``episodes.jsonl``,
``best_policy.json`` and ``.png`` and ``tb/`` (:mod:`agents.callbacks`), and ``state.pt``
(:mod:`agents.resume`).
"""
from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from agents.config import SearchConfig, config_dict, read_config
from agents.resume import STATE_FILE
from amc.api import latency_record
from amc.checkpoint import atomic_write_json, fresh_dir, holds_files, read_json
from amc.errors import AmcError
from amc.problem import Problem
from amc.spec import PruneSpec

FILES = ("config.json", "episodes.jsonl", "best_policy.json", "tb", STATE_FILE)
"""What a search writes; a fresh search stopped before its first episode removes them again."""


def prepare_run_dir(path: str | Path) -> Path:
    """An empty, writable run folder; an existing non-empty one is refused (no silent overwrite)."""
    run = Path(path)
    hint = None
    if (run / STATE_FILE).is_file():
        hint = f"run folder {run} holds a search already; continue it with: amc search --resume {run} " \
               "(or choose another --run)"
    elif run.is_dir() and holds_files(run):
        hint = f"run folder {run} already exists and is not empty; choose another --run or delete it"
    return fresh_dir(run, "--run", hint)


def stopped_in_setup(run: Path) -> bool:
    """Whether ``run`` holds a ``config.json`` but no search state and no logged episode: a
    search killed during its set-up (the state is first saved before the first episode)."""
    jsonl = run / "episodes.jsonl"
    logged = jsonl.is_file() and b"\n" in jsonl.read_bytes()
    return (run / "config.json").is_file() and not (run / STATE_FILE).exists() and not logged


def read_episodes(run: Path) -> list[dict[str, Any]]:
    """The finished episodes of ``run/episodes.jsonl``, in order (a torn last line, from a
    search stopped while writing it, is dropped)."""
    rows = []
    for line in (run / "episodes.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def read_run_config(run: Path) -> tuple[PruneSpec, SearchConfig, dict[str, Any]]:
    """The spec, the search settings and the whole record of ``run/config.json``."""
    if not run.is_dir():
        raise AmcError(f"run folder not found: {run}")
    if not (run / "config.json").is_file():
        raise AmcError(f"{run} has no config.json; --resume takes a run folder of amc search")
    config = read_json(run / "config.json")
    if not isinstance(config, dict):
        raise AmcError(f"{run / 'config.json'} is not a search's config")
    spec, cfg = read_config(config.get("config"), source=str(run / "config.json"))
    return spec, cfg, config


def write_config(run: Path, spec: PruneSpec, cfg: SearchConfig, problem: Problem, env: Any,
                 base_top1: float, device: torch.device, command: list[str] | None) -> None:
    """``config.json``: the resolved settings, the split, the layers, the versions and the command."""
    pruner = problem.pruner
    atomic_write_json(run / "config.json", {
        "config": config_dict(spec, cfg), "algo": cfg.algo, "device": str(device),
        "threads": torch.get_num_threads(), "eval_batch_size": env.eval_batch_size,
        "model": problem.model_spec.to_dict(), "weights": problem.weights, "split": problem.splits.record,
        "wall": env.target is not None, "num_layers": pruner.num_layers,
        "layers": [{"group": g.index, "layer": g.layer, "channels": g.channels} for g in pruner.graph.groups],
        "skipped": [{"layers": n, "reason": r} for n, r in pruner.graph.skipped],
        "flops": pruner.flops.full, "params": pruner.params.full, "base_reward_top1": base_top1,
        "feature_cache_bytes": pruner.cache.nbytes if pruner.cache is not None else 0,
        "latency": latency_record(pruner.latency) if pruner.latency is not None else None,
        "versions": package_versions(), "command": command or sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S")})


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("amc", "torch", "torchvision", "stable-baselines3", "gymnasium", "numpy", "torch-pruning"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def remove(run: Path, names: tuple[str, ...] = FILES) -> None:
    for name in names:
        p = run / name
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def result(best: dict, episodes: int, base_top1: float | None, seconds: float, run: Path,
           resumed_at: int | None = None) -> dict[str, Any]:
    """What :func:`agents.search.search` returns: the best policy's numbers and the run's cost."""
    out = {"best_reward": best["reward"], "best_reward_top1": best["reward_top1"],
           "best_flops_ratio": best["flops_ratio"], "best_params_ratio": best["params_ratio"],
           "best_episode": best["episode"], "best_ratios": best["ratios"], "episodes": episodes,
           "base_reward_top1": base_top1, "seconds": round(seconds, 2),
           "seconds_per_episode": round(seconds / max(1, episodes), 4), "run": str(run)}
    if resumed_at is not None:
        out["resumed_at_episode"] = resumed_at
    return out

"""The Python API the commands share: prune with a policy, read a search run, compare policies.

Plain functions with typed arguments. ``amc prune``, ``amc export --run``, ``amc report``
and ``amc bench quality`` parse their options and call these; none of them calls another
command. The search itself is :func:`agents.search.search` (the engine never imports the
agents). A script prunes like this::

    from amc.api import prune
    from amc.spec import PruneSpec

    slim, meta = prune(PruneSpec(model="plain20"), "uniform:0.5")
"""
from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from amc.checkpoint import base_weights_entry, read_json
from amc.errors import AmcError
from amc.problem import Problem
from amc.spec import PruneSpec

Policy = str | Sequence[float]
"""``uniform:R`` (the largest uniform ratio within R of the FLOPs), a policy JSON file
(e.g. a search's ``best_policy.json``), or one preserve ratio per prunable layer."""


def parse_uniform(policy: Policy) -> float | None:
    """R of a ``uniform:R`` policy (checked), or None for any other policy."""
    if not isinstance(policy, str) or not policy.startswith("uniform:"):
        return None
    text = policy.split(":", 1)[1]
    try:
        r = float(text)
    except ValueError as e:
        raise AmcError(f"--policy uniform:R needs a number, got {policy!r}") from e
    if not math.isfinite(r) or not (0.0 < r <= 1.0):
        raise AmcError(f"uniform FLOPs ratio must be in (0, 1], got {text}")
    return r


def policy_counts(problem: Problem, policy: Policy) -> list[int]:
    """Kept channels per prunable group for ``policy``, at the spec's channel rounding."""
    from amc.policy import load_policy, parse_policy

    pruner, rnd = problem.pruner, problem.spec.channel_round
    uniform = parse_uniform(policy)
    if uniform is not None:
        return pruner.uniform_counts(uniform, rnd)
    if isinstance(policy, (str, Path)):
        return load_policy(policy, pruner, rnd)
    return parse_policy(list(policy), pruner, rnd)


def prune(spec: PruneSpec, policy: Policy, *, device: str = "cpu", problem: Problem | None = None,
          progress: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Prune ``spec``'s model with ``policy``; returns the slim model (on CPU) and its ``model.json``.

    The slim model is reconstructed as the spec says and evaluated on the reward set and
    the test set (a final report, after the policy was chosen). Nothing is written; save
    with :func:`amc.pruned.save_pruned`. Pass a ``problem`` built from ``spec`` to reuse it.
    """
    from amc.surgery import channel_plan
    from amc.train import evaluate, resolve_device

    dev = resolve_device(device)
    parse_uniform(policy)  # a bad policy string fails before the data is loaded
    problem = problem or spec.build(progress=progress)
    pruner, splits = problem.pruner, problem.splits
    counts = policy_counts(problem, policy)
    slim = problem.prune(counts)
    desc = pruner.describe(counts)
    reward_top1 = evaluate(slim.to(dev), splits.reward, dev)
    test_top1 = evaluate(slim, splits.test, dev)
    base_reward = evaluate(copy.deepcopy(problem.model).to(dev), splits.reward, dev)
    slim.cpu()
    weights = problem.weights
    meta = {
        "kind": "pruned", "model": problem.model_spec.to_dict(), "dataset": spec.dataset, "split": splits.record,
        "input_shape": list(splits.train.shape), "coupled": spec.coupled, "criterion": spec.criterion,
        "channel_round": spec.channel_round, "reconstruct": spec.reconstruct, "spec": spec.to_dict(),
        "policy": {"source": policy if isinstance(policy, str) else "ratios",
                   "ratios": [l["ratio"] for l in desc["layers"]]},
        "channels": channel_plan(pruner.graph, counts),
        # absolute, so amc eval can rebuild the base model from any working folder (and the shipped
        # weights by their place in the package, so from another install too)
        "base": {**base_weights_entry(weights), "flops": pruner.flops.full, "params": pruner.params.full,
                 "reward_top1": base_reward},
        "flops": desc["flops"], "params": desc["params"], "flops_ratio": desc["flops_ratio"],
        "params_ratio": desc["params_ratio"], "reward_top1": reward_top1, "test_top1": test_top1,
    }
    return slim, meta


@dataclass
class SearchRun:
    """What a search run folder records: its spec, its best policy, and its budget."""

    folder: Path
    spec: PruneSpec
    policy: Path
    target: float
    search_reward_top1: float | None
    """The reward-set top-1 the search measured for ``policy``, when it recorded one."""

    @property
    def source(self) -> dict[str, Any]:
        out: dict[str, Any] = {"run": str(self.folder.resolve()), "policy": str(self.policy.resolve())}
        if self.search_reward_top1 is not None:
            out["search_reward_top1"] = self.search_reward_top1
        return out


def read_run(run: str | Path, policy: str | Path | None = None, data_dir: str | None = None) -> SearchRun:
    """The spec of an ``amc search`` run folder and its best (or the given) policy.

    The search's seed also seeded its calibration sampling, so the spec read here prunes
    exactly as the search did, and the model it gives is the one the search evaluated.
    ``data_dir`` replaces the recorded data folder (data moved since the search).
    """
    folder = Path(run)
    if not folder.is_dir():
        raise AmcError(f"run folder not found: {folder}")
    config = read_json(folder / "config.json")
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise AmcError(f"{folder / 'config.json'} lacks the search settings (a 'config' object); "
                       "was it written by amc search?")
    spec = PruneSpec.from_dict(config["config"], source=str(folder / "config.json"))
    if data_dir:
        spec = spec.replace(data_dir=data_dir)
    path = Path(policy) if policy else folder / "best_policy.json"
    if not path.is_file():
        raise AmcError(f"policy file not found: {path}" + ("" if policy else " (has the search finished an episode?)"))
    best = read_json(path)
    best = best if isinstance(best, dict) else {}
    target = best.get("target")
    if not isinstance(target, (int, float)) or isinstance(target, bool):
        target = spec.target
    top1 = best.get("reward_top1")
    return SearchRun(folder, spec, path, float(target),
                     float(top1) if isinstance(top1, (int, float)) and not isinstance(top1, bool) else None)


def compare(run: str | Path, policy: str | Path | None = None, data_dir: str | None = None,
            device: str = "cpu", progress: bool = False, problem: Problem | None = None,
            latency: bool | None = None, repeats: int = 20,
            include: Sequence[str] = ("base", "uniform", "AMC")) -> dict[str, Any]:
    """Base, uniform at the run's budget and the run's best policy, pruned by one pruner.

    Reward-set and test top-1, FLOPs and params of each; no fine-tuning. Uniform is the
    largest uniform ratio within the run's budget, in the budget's own resource (FLOPs,
    params or predicted latency). With ``latency`` (default: when the run's budget is
    latency) each row also gets the predicted latency ratio of the run's latency target and
    the measured one: the three models timed end to end, interleaved, in that runtime, batch
    and thread count, median of ``repeats``. Pass a ``problem`` built from the run's spec to
    reuse it across runs of one spec. ``include`` picks rows (all three for ``latency``).
    A latency run whose ``--verify-top`` kept another policy than the best one
    (``RUN/verified_policy.json``) gets a fourth row, "AMC verified", timed in the same run.
    """
    from amc.latency_runtime import end_to_end
    from amc.train import evaluate, resolve_device

    dev = resolve_device(device)
    rec = read_run(run, policy, data_dir)
    spec = rec.spec
    latency = spec.budget == "latency" if latency is None else latency
    if latency and set(include) != {"base", "uniform", "AMC"}:
        raise AmcError("measured latency ratios need all three rows (base, uniform, AMC)")
    if problem is None or problem.spec != spec:
        problem = spec.build(progress=progress, latency=latency or None)
    pruner, splits = problem.pruner, problem.splits
    if latency and pruner.latency is None:
        pruner.use_latency(spec.latency_model(pruner, progress))
    plans = [("base", lambda: None),
             (f"uniform@{rec.target:g}", lambda: pruner.uniform_counts(rec.target, spec.channel_round, spec.budget)),
             ("AMC", lambda: policy_counts(problem, str(rec.policy)))]
    plans = [(name, counts()) for (name, counts), kind in zip(plans, ("base", "uniform", "AMC")) if kind in include]
    verified = Path(run) / "verified_policy.json"
    if latency and policy is None and verified.is_file():
        counts = policy_counts(problem, str(verified))
        if counts != plans[-1][1]:
            plans.append(("AMC verified", counts))
    rows, nets = [], {}
    for name, counts in plans:
        # evaluate a copy: moving the pruner's own model to the GPU would leave it where the
        # next prune cannot slice it
        net = (copy.deepcopy(problem.model) if counts is None else problem.prune(counts)).to(dev)
        r = {"name": name, "reward_top1": evaluate(net, splits.reward, dev),
             "test_top1": evaluate(net, splits.test, dev),
             "flops": pruner.flops(counts) if counts else pruner.flops.full,
             "params": pruner.params(counts) if counts else pruner.params.full}
        r["flops_ratio"], r["params_ratio"] = r["flops"] / pruner.flops.full, r["params"] / pruner.params.full
        if latency:
            r["predicted_latency_ratio"] = pruner.latency.predicted_ratio(counts) if counts else 1.0
            nets[name] = net.cpu()
        rows.append(r)
        if progress:
            print(f"evaluated {name}", file=sys.stderr)
    out = {"run": str(run), "model": problem.model_spec.name, "dataset": spec.dataset, "layers": pruner.num_layers,
           "reconstruct": spec.reconstruct, "budget": spec.budget, "target": rec.target, "rows": rows,
           "spec": spec.to_dict(), **rec.source}
    if latency:
        if progress:
            print(f"timing the three models ({spec.runtime}, batch {spec.latency_batch}, "
                  f"{spec.latency_threads} thread(s), {repeats} rounds)", file=sys.stderr)
        timed = end_to_end(nets, pruner.input_shape, spec.latency_batch, spec.runtime, spec.latency_threads, repeats)
        for r in rows:
            r["measured_ms"] = timed[r["name"]].median_ms
            r["measured_latency_ratio"] = r["measured_ms"] / timed["base"].median_ms
        out["latency"] = latency_record(pruner.latency)
    return out


def latency_record(latency) -> dict[str, Any]:
    """What a run records of its latency target: runtime, batch, threads, the table's fingerprint."""
    meta = latency.meta
    keep = ("runtime", "batch", "threads", "channel_round", "fingerprint_id", "fingerprint", "measured_full_ms")
    return {**{k: meta.get(k) for k in keep}, "predicted_full_ms": latency.full,
            "cache_file": str(latency.cache_file) if latency.cache_file else None}


def base_model_copy(problem: Problem, device: torch.device) -> nn.Module:
    """The base model where it can be evaluated, without moving the pruner's own copy off the CPU."""
    return copy.deepcopy(problem.model).to(device) if device.type != "cpu" else problem.model

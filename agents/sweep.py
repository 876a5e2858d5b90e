"""Many searches as Ray tasks: models x targets x algorithms x seeds, on one machine or a cluster.

Each trial is one ``amc search`` run folder, ``OUT/{model}-t{target}/{algo}-seed{seed}``,
run through the Python API (:func:`agents.search.search`) inside a Ray task that asks for
``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs (fractions share a GPU). Ray schedules
them; nothing here is a scheduler. A task whose worker dies is retried by Ray, and the retry
resumes the search from its saved state (:func:`agents.search.resume_search`), so a lost
worker costs at most the episodes since the last save. Each ``{model}-t{target}`` folder then
gets the ``summary.json`` of ``amc bench quality`` (:mod:`agents.quality`).
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from agents.config import SearchConfig
from agents.quality import algo_config
from amc.errors import AmcError
from amc.spec import PruneSpec

INSTALL_HINT = "amc sweep needs Ray: pip install 'amc[scale]' (or pip install 'ray>=2.9')"


@dataclass(frozen=True)
class Trial:
    """One search of a sweep."""

    group: str
    """``{model}-t{target}``: the trials summarised together (one spec, several algorithms and seeds)."""
    algo: str
    seed: int
    spec: PruneSpec
    cfg: SearchConfig
    run_dir: str


def model_tag(model: str) -> str:
    """A folder-safe name for a model (``path/to/net.py:factory`` -> ``net-factory``)."""
    name = Path(model.split(":")[0]).stem + ("-" + model.split(":", 1)[1] if ":" in model else "")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"


def plan(spec: PruneSpec, cfg: SearchConfig, models: Sequence[str], targets: Sequence[float],
         algos: Sequence[str], seeds: Sequence[int], out: str | Path, cpus_per_trial: int = 1) -> list[Trial]:
    """Every trial of the sweep, each with its spec and config checked (so a bad setting fails
    before any search starts). Random search gets no warm-up, as in ``amc bench quality``."""
    trials = []
    for model in models:
        for target in targets:
            group = f"{model_tag(model)}-t{target:g}"
            for seed in seeds:
                for algo in algos:
                    s = spec.replace(model=model, target=target, seed=seed).validate()
                    # --envs N: the trial's N worker processes share its CPUs
                    c = algo_config(cfg, algo, threads=max(1, int(cpus_per_trial) // cfg.envs))
                    trials.append(Trial(group, algo, seed, s, c, str(Path(out) / group / f"{algo}-seed{seed}")))
    return trials


def _trial(spec: PruneSpec, cfg: SearchConfig, run_dir: str) -> dict[str, Any]:
    """Runs inside a Ray worker: the search, or its continuation when the folder holds one."""
    from agents.search import resume_search, search

    if (Path(run_dir) / "config.json").is_file():
        return resume_search(run_dir, progress=False)
    return search(spec, cfg, run_dir, progress=False)


def run_trials(trials: Sequence[Trial], address: str | None = None, num_cpus: int | None = None,
               cpus_per_trial: float = 1, gpus_per_trial: float = 0, retries: int = 3,
               log=lambda message: print(message, file=sys.stderr)) -> dict[str, dict]:
    """Run every trial as a Ray task; returns ``run_dir -> search result``.

    Args:
        address: a running cluster (``auto`` or ``HOST:PORT``); None starts a local Ray with
            ``num_cpus`` CPUs (default: all).
        cpus_per_trial, gpus_per_trial: what each task reserves (a fraction of a GPU shares it).
        retries: how often Ray restarts a task whose worker died.
    """
    try:
        import ray
    except ImportError as e:
        raise AmcError(INSTALL_HINT) from e
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": num_cpus}
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False, **kwargs)
    try:
        remote = ray.remote(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_retries=retries)(_trial)
        refs = {remote.remote(t.spec, t.cfg, t.run_dir): t for t in trials}
        results: dict[str, dict] = {}
        t0, pending = time.perf_counter(), list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                t = refs[done[0]]
                try:
                    results[t.run_dir] = ray.get(done[0])
                except ray.exceptions.RayTaskError as e:  # the search itself failed: one line, like the CLI
                    cause = e.cause if getattr(e, "cause", None) is not None else e
                    raise AmcError(f"trial {t.group}/{t.algo}-seed{t.seed} failed: {cause}") from e
                log(f"[{time.perf_counter() - t0:7.0f}s] {t.group}/{t.algo}-seed{t.seed} done "
                    f"({len(results)} of {len(trials)})")
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)
            raise
        return results
    finally:
        if started_here:
            ray.shutdown()


def summarize_groups(trials: Sequence[Trial], results: dict[str, dict], out: Path, device: str = "cpu",
                     progress: bool = False, extra: dict | None = None) -> list[dict]:
    """One :func:`agents.quality.summarize` per group, in the group's folder."""
    from agents.quality import summarize

    summaries = []
    for group in dict.fromkeys(t.group for t in trials):
        members = [t for t in trials if t.group == group]
        first = members[0]
        cfg = next((t.cfg for t in members if t.algo != "random"), first.cfg)  # random has no warm-up
        summaries.append(summarize(
            first.spec, cfg, list(dict.fromkeys(t.seed for t in members)),
            list(dict.fromkeys(t.algo for t in members)), [(t.seed, t.algo, t.spec, t.run_dir) for t in members],
            {(t.seed, t.algo): results[t.run_dir] for t in members}, out / group, device, progress,
            {"group": group, **(extra or {})}))
    return summaries

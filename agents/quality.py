"""What a set of searches achieved: uniform vs. each algorithm's best policy, over seeds.

Shared by ``amc bench quality`` (local processes) and ``amc sweep`` (Ray): both write the same
``summary.json`` (and ``curves.png``, the learning curves) for one spec, from run folders named
``{algo}-seed{seed}``. For each seed,
:func:`amc.api.compare` prunes with the uniform policy and the search's best policy by one
pruner; reward-set accuracy decides, the test set is the headline, and "recovered" (the share
of uniform's loss won back) is given on both, per seed and as mean +- std over seeds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

from amc.checkpoint import atomic_write_json
from amc.errors import AmcError


class Evaluations:
    """Rows of :func:`amc.api.compare` kept in ``OUT/evaluations.json``, so that a rerun with
    ``--resume`` evaluates nothing twice. A row's key holds everything it depends on: the
    seed's spec (whose seed also seeds calibration) and, for a searched policy, the policy file."""

    def __init__(self, out: Path, device: str, progress: bool) -> None:
        self.path, self.device, self.progress = out / "evaluations.json", device, progress
        try:
            self.rows = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            sys.stderr.write(f"warning: {self.path} is torn; its evaluations are done again\n")
            self.rows = {}
        self.problems: dict[str, object] = {}  # runs of one seed share the spec, so they share one pruner

    def get(self, spec, run_dir: str, include: tuple[str, ...]) -> list[dict]:
        from amc.api import compare

        what = {"spec": spec.to_dict(), "include": include}
        if "AMC" in include:
            what["policy"] = (Path(run_dir) / "best_policy.json").read_text(encoding="utf-8")
        key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]
        if key not in self.rows:
            spec_key = json.dumps(spec.to_dict(), sort_keys=True)
            if spec_key not in self.problems:
                self.problems[spec_key] = spec.build(progress=self.progress)
            rep = compare(run_dir, device=self.device, problem=self.problems[spec_key], latency=False,
                          include=include)
            self.rows[key] = rep["rows"]
            atomic_write_json(self.path, self.rows)
        return self.rows[key]


def recovered(row: dict, uniform: dict, base: dict, key: str) -> float:
    """The share of uniform's loss (against the base) that ``row`` wins back, on ``key``."""
    lost = base[key] - uniform[key]
    return (row[key] - uniform[key]) / lost if lost > 0 else float("nan")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (0 for one seed; nan propagates, as for a model uniform did not hurt)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def algo_config(cfg: Any, algo: str, **changes: Any) -> Any:
    """``cfg`` for one algorithm of a study, checked: random search has no warm-up to spend."""
    out = dataclasses.replace(cfg, algo=algo, warmup=cfg.warmup if algo != "random" else 0, **changes)
    out.validate()  # every bad setting is refused before the first search starts
    return out


#: settings that do not change what a search finds (where and how fast it ran, what it saves)
_NOT_THE_SEARCH = ("device", "threads", "eval_batch_size", "save_every", "verify_top")


def check_same_search(spec: Any, cfg: Any, run: Path) -> None:
    """Refuse to report a search that a resumed benchmark or sweep would reuse but did not ask
    for: one run with other settings (say the paper's wall, where the command says
    ``--fill-budget``) would be labelled with the command's."""
    from agents.run_folder import read_run_config

    if not (run / "config.json").is_file():
        return
    rec_spec, rec_cfg, _ = read_run_config(run)
    # read as the benchmark would have run it (`amc search --algo random` records a warm-up)
    rec_cfg = algo_config(rec_cfg, rec_cfg.algo)
    differ = []
    for ours, theirs in ((spec, rec_spec), (cfg, rec_cfg)):
        for f in dataclasses.fields(ours):
            mine, recorded = getattr(ours, f.name), getattr(theirs, f.name)
            if f.name in ("weights", "data_dir"):
                mine, recorded = (str(Path(p).resolve()) if p else None for p in (mine, recorded))
            if f.name not in _NOT_THE_SEARCH and mine != recorded:
                differ.append(f"{f.name} {recorded!r} there, {mine!r} here")
    if differ:
        raise AmcError(f"{run} holds a search with other settings than this command's ({'; '.join(differ)}); "
                       "give the settings it was run with, or another --out")


def summarize(spec: Any, cfg: Any, seeds: Sequence[int], algos: Sequence[str],
              jobs: Sequence[tuple[int, str, Any, str]], searches: dict[tuple[int, str], dict], out: Path,
              device: str = "cpu", progress: bool = False, extra: dict | None = None) -> dict:
    """Evaluate finished searches and write ``OUT/summary.json``.

    Args:
        spec, cfg: the shared :class:`~amc.spec.PruneSpec` and :class:`~agents.config.SearchConfig`.
        jobs: ``(seed, algo, seed's spec, run folder)`` per search.
        searches: ``(seed, algo) -> `` what the search returned (its ``best_episode``, ``seconds``).
        out: the folder of ``summary.json`` and ``evaluations.json``.
        extra: more keys for the summary (how it was run).
    """
    evals = Evaluations(out, device, progress)
    results: dict[str, list[dict]] = {a: [] for a in algos}
    uniform: dict[int, dict] = {}
    base = None
    for seed, algo, seed_spec, run_dir in jobs:
        search = searches[seed, algo]
        if seed not in uniform:  # the uniform row depends on the calibration seed only
            base, uniform[seed] = evals.get(seed_spec, run_dir, ("base", "uniform"))
        (amc_row,) = evals.get(seed_spec, run_dir, ("AMC",))
        results[algo].append({"seed": seed, **amc_row, "best_episode": search["best_episode"],
                              "seconds": search["seconds"],
                              **{f"recovered_{k}": recovered(amc_row, uniform[seed], base, f"{k}_top1")
                                 for k in ("reward", "test")}})
    summary = {"model": spec.model, "dataset": spec.dataset, "budget": spec.budget, "target": spec.target,
               "episodes": cfg.episodes, "fill_budget": spec.fill_budget, "spec": spec.to_dict(),
               "warmup": cfg.warmup, "seeds": list(seeds), "algos": list(algos), "base": base,
               "uniform": list(uniform.values()), "runs": results, **(extra or {})}
    keys = ("reward_top1", "test_top1", "flops_ratio")
    summary["mean"] = {"uniform": {k: statistics.fmean(u[k] for u in uniform.values()) for k in keys}}
    summary["std"] = {"uniform": {k: mean_std([u[k] for u in uniform.values()])[1] for k in keys}}
    for algo, rows in results.items():
        stats = {k: mean_std([r[k] for r in rows]) for k in (*keys, "recovered_reward", "recovered_test")}
        summary["mean"][algo] = {k: m for k, (m, _) in stats.items()}
        summary["std"][algo] = {k: sd for k, (_, sd) in stats.items()}
        summary["mean"][algo]["recovered"] = summary["mean"][algo]["recovered_reward"]  # the older key
    atomic_write_json(out / "summary.json", summary)
    _plot(out)
    return summary


def _plot(out: Path) -> None:
    """``OUT/curves.png``: each algorithm's learning curve over seeds (:mod:`agents.curves`)."""
    from agents.curves import collect, curve_stats, plot_curves

    try:
        curves = collect([out], [out.name])
    except Exception as e:  # a picture must not cost the summary
        sys.stderr.write(f"warning: no curves.png: {e}\n")
        return
    plot_curves({label: curve_stats(c) for label, c in curves.items()}, out / "curves.png")


def summary_table(summary: dict) -> str:
    """The people's view of a :func:`summarize` result."""
    m, sd, base = summary["mean"], summary["std"], summary["base"]
    lines = [f"{summary['model']}, {summary['budget']} budget {summary['target']:g}, {summary['episodes']} episodes, "
             f"seeds {summary['seeds']}, no fine-tuning; mean +- std over seeds; recovered: the share of uniform's "
             "loss won back, per seed",
             f"{'':10} {'reward top-1':>16} {'test top-1':>16} {'recovered (reward)':>19} {'recovered (test)':>17}",
             f"{'base':10} {base['reward_top1']:15.2f}% {base['test_top1']:15.2f}%",
             f"{'uniform':10} {m['uniform']['reward_top1']:8.2f} +- {sd['uniform']['reward_top1']:4.2f} "
             f"{m['uniform']['test_top1']:8.2f} +- {sd['uniform']['test_top1']:4.2f}"]
    for algo in summary["algos"]:
        a, d = m[algo], sd[algo]
        lines.append(f"{algo:10} {a['reward_top1']:8.2f} +- {d['reward_top1']:4.2f} {a['test_top1']:8.2f} +- "
                     f"{d['test_top1']:4.2f} {100 * a['recovered_reward']:11.0f}% +- {100 * d['recovered_reward']:3.0f} "
                     f"{100 * a['recovered_test']:9.0f}% +- {100 * d['recovered_test']:3.0f}")
    return "\n".join(lines)

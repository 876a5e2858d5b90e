"""The end of a latency search: time its best policies end to end, and keep the best one
that is fast enough when measured, not only when predicted.

The wall guarantees the latency *table's* prediction. The table is a model and errs by some
percent per policy, and a search that buys accuracy up to the budget drifts towards the
policies whose cost the table underestimates (README, "Latency-constrained AMC"). So with
``--verify-top K``, after a search under ``--budget latency``, the K best distinct policies
(by reward) are timed end to end beside the base in the target runtime, batch and threads,
and the best one whose measured ratio is at or under the target becomes
``RUN/verified_policy.json`` (the format ``amc prune --policy`` reads). If none is, the
fastest measured one is chosen and the file says so. ``RUN/verified.json`` holds every
measurement. The search itself, and ``best_policy.json``, are unchanged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.run_folder import read_episodes
from amc.checkpoint import atomic_write_json
from amc.policy import write_policy


def top_policies(run: Path, k: int) -> list[dict[str, Any]]:
    """The ``k`` best distinct policies of a run's ``episodes.jsonl``, best reward first (the
    earlier episode first among equal rewards)."""
    rows = read_episodes(run)
    out: list[dict[str, Any]] = []
    seen: set[tuple[int, ...]] = set()
    for row in sorted(rows, key=lambda r: (-r["reward"], r["episode"])):
        key = tuple(row["kept"])
        if key not in seen:
            seen.add(key)
            out.append(row)
        if len(out) == k:
            break
    return out


def verify_top(run: Path, pruner: Any, target: float, k: int, repeats: int = 10,
               progress: bool = False) -> dict[str, Any]:
    """Time the ``k`` best policies of ``run`` and write ``verified.json`` and ``verified_policy.json``.

    Returns the record of ``verified.json``: the target, the runtime, each candidate's episode,
    reward, reward-set top-1 and predicted and measured latency ratio, and the chosen episode.
    """
    from amc.latency_bench import measure_policies

    latency = pruner.latency
    meta = latency.meta
    candidates = top_policies(run, k)
    plans = [(f"episode-{row['episode']}", row["kept"]) for row in candidates]
    timed, _ = measure_policies(pruner, latency, plans, meta["runtime"], meta["batch"], meta["threads"], repeats,
                                progress=progress)
    rows = [{"episode": c["episode"], "reward": c["reward"], "reward_top1": c["reward_top1"],
             "predicted_ratio": t["predicted_ratio"], "measured_ratio": t["measured_ratio"],
             "measured_ms": t["measured_ms"], "kept": c["kept"]} for c, t in zip(candidates, timed)]
    fitting = [r for r in rows if r["measured_ratio"] <= target]
    chosen = fitting[0] if fitting else min(rows, key=lambda r: r["measured_ratio"])
    record = {"target": target, "runtime": meta["runtime"], "batch": meta["batch"], "threads": meta["threads"],
              "repeats": repeats, "candidates": rows, "chosen_episode": chosen["episode"],
              "measured_within_target": bool(fitting)}
    atomic_write_json(run / "verified.json", record)
    write_policy(run / "verified_policy.json", pruner, chosen["kept"], reward=chosen["reward"],
                 reward_top1=chosen["reward_top1"], episode=chosen["episode"],
                 measured_latency_ratio=chosen["measured_ratio"], measured_within_target=bool(fitting),
                 target=target)
    return record

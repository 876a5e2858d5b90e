"""The end of a latency search: time its best policies end to end, and keep the best one
that is fast enough when measured, not only when predicted.

The wall guarantees the latency *table's* prediction. The table is a model and errs by some
percent per policy, and a search that buys accuracy up to the budget drifts towards the
policies whose cost the table underestimates (README, "Latency-constrained AMC"). So with
``--verify-top K``, after a search under ``--budget latency``, the K best distinct policies
(by reward) are timed end to end in the target runtime, batch and threads, all of them
interleaved with the base in one run (so machine drift does not reorder them), and the best
one whose measured ratio is at or under the target becomes ``RUN/verified_policy.json`` (the
format ``amc prune --policy`` reads). If none is, the fastest measured one is chosen and the
file says so, and ``RUN/verified.json``, which holds every measurement, suggests a target for
a new search: the target divided by the candidates' median measured/predicted ratio (their
shared bias). The search itself, and ``best_policy.json``, are unchanged. A finished search
is verified (again) with ``amc search --resume RUN --verify-top K``.
"""
from __future__ import annotations

import statistics
import sys
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
    from amc.latency_bench import time_together

    latency = pruner.latency
    meta = latency.meta
    candidates = top_policies(run, k)
    if progress:
        sys.stderr.write(f"timing the {len(candidates)} best policies with the base, interleaved in one run\n")
    base_ms, ms = time_together(pruner, [(f"episode-{c['episode']}", c["kept"]) for c in candidates],
                                meta["runtime"], meta["batch"], meta["threads"], repeats)
    rows = [{"episode": c["episode"], "reward": c["reward"], "reward_top1": c["reward_top1"],
             "predicted_ratio": latency.predicted_ratio(c["kept"]),
             "measured_ratio": ms[f"episode-{c['episode']}"] / base_ms,
             "measured_ms": ms[f"episode-{c['episode']}"], "kept": c["kept"]} for c in candidates]
    fitting = [r for r in rows if r["measured_ratio"] <= target]
    chosen = fitting[0] if fitting else min(rows, key=lambda r: r["measured_ratio"])
    # the search keeps what the table prices too cheaply, so its best policies can all share one
    # bias; dividing the target by it aims a new search at the speed asked for
    bias = statistics.median(r["measured_ratio"] / r["predicted_ratio"] for r in rows)
    record = {"target": target, "runtime": meta["runtime"], "batch": meta["batch"], "threads": meta["threads"],
              "repeats": repeats, "base_measured_ms": base_ms, "candidates": rows, "chosen_episode": chosen["episode"],
              "measured_within_target": bool(fitting), "measured_over_predicted": bias,
              "suggested_target": None if fitting else target / bias}
    atomic_write_json(run / "verified.json", record)
    write_policy(run / "verified_policy.json", pruner, chosen["kept"], reward=chosen["reward"],
                 reward_top1=chosen["reward_top1"], episode=chosen["episode"],
                 measured_latency_ratio=chosen["measured_ratio"], measured_within_target=bool(fitting),
                 target=target)
    return record

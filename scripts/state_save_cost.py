"""What saving a search's state costs: the README's "Reliability" figure.

Runs a short DDPG search with the default agent (actor and critic 300-300) and times every
save of ``RUN/state.pt`` (the deep copy of the state, then ``torch.save`` and the atomic
write with fsync), and reports the file's size::

    .venv/bin/python scripts/state_save_cost.py --model plain20 --episodes 12 --threads 1

The search itself is :func:`agents.search.search`; only the two functions that save are
wrapped with a timer. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="plain20")
    p.add_argument("--episodes", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()

    import torch

    import agents.resume as resume
    from agents.config import SearchConfig
    from agents.search import search
    from amc.spec import PruneSpec

    torch.set_num_threads(args.threads)
    captures: list[float] = []
    saves: list[float] = []
    capture, save_state = resume.SearchState.capture, resume.save_state

    def timed_capture(self):
        t0 = time.perf_counter()
        try:
            return capture(self)
        finally:
            captures.append(time.perf_counter() - t0)

    def timed_save(run, state):
        t0 = time.perf_counter()
        try:
            return save_state(run, state)
        finally:
            saves.append(time.perf_counter() - t0)

    resume.SearchState.capture, resume.save_state = timed_capture, timed_save
    spec = PruneSpec(model=args.model, data_dir=args.data_dir, calib_batches=4, seed=0)
    cfg = SearchConfig(episodes=args.episodes, warmup=args.warmup, threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        res = search(spec, cfg, run, progress=False)
        size = (run / resume.STATE_FILE).stat().st_size
    per_episode = [c + s for c, s in zip(captures, saves)]
    print(json.dumps({
        "model": args.model, "episodes": res["episodes"], "threads": args.threads, "saves": len(saves),
        "capture_ms_median": round(1000 * statistics.median(captures), 1),
        "write_ms_median": round(1000 * statistics.median(saves), 1),
        "save_ms_median": round(1000 * statistics.median(per_episode), 1),
        "state_mib": round(size / 2**20, 2),
        "search_s_per_episode": res["seconds_per_episode"], "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

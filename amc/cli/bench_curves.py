"""``amc bench curves``: learning curves of finished or running searches, side by side (:mod:`agents.curves`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from amc.cli.common import emit
from amc.options import bounded


def register(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser("curves", help="learning curves of searches side by side, as a PNG",
                        description="Reads each folder's episodes.jsonl (nothing is re-evaluated) and draws, per "
                                    "curve, the best reward-set top-1 so far and a moving average of each "
                                    "episode's, as the mean over seeds with the range shaded. A FOLDER is a "
                                    "search run folder (one curve) or a folder of amc bench quality or amc sweep "
                                    "(one curve per algorithm, over its {algo}-seed{N} runs). Also prints, per "
                                    "curve, the mean best, the episode where each seed found its best and how many "
                                    "found it in the warm-up. Searches still running are cut to the episodes every "
                                    "seed has finished.")
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="run folders or benchmark folders")
    p.add_argument("--labels", nargs="+", default=None, help="a label per FOLDER (default: the folder names)")
    p.add_argument("--window", type=bounded(int, "--window", 1), default=20,
                   help="episodes in the moving average (default 20)")
    p.add_argument("--title", default="", help="figure title")
    p.add_argument("--out", required=True, help="the PNG file to write")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agents.curves import collect, curve_stats, plot_curves, summarize_curves
    from amc.errors import AmcError

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise AmcError(f"--out must name a .png file, got {out}")
    if not out.parent.is_dir():
        raise AmcError(f"{out.parent} is not a folder")
    stats = {label: curve_stats(c, args.window) for label, c in collect(args.folders, args.labels).items()}
    plot_curves(stats, out, args.title)
    res = {"out": str(out), "curves": summarize_curves(stats)}
    lines = [f"{'curve':32} {'seeds':>5} {'episodes':>8} {'mean best':>9} {'last 100 mean':>13}  best found at "
             "episode (warm-up)"]
    for label, s in res["curves"].items():
        lines.append(f"{label:32} {s['seeds']:5d} {s['episodes']:8d} {s['final_best_mean']:8.2f}% "
                     f"{s['last_100_mean']:12.2f}%  {', '.join(map(str, s['best_episode']))} "
                     f"({s['best_in_warmup']} of {s['seeds']} in the {s['warmup']} warm-up episodes)")
    lines.append(f"wrote {out}")
    emit(res, args.json, "\n".join(lines))
    return 0

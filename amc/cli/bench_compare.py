"""``amc bench compare``: groups of fine-tuned checkpoints, compared (:mod:`amc.finetune_stats`)."""
from __future__ import annotations

import argparse

from amc.cli.common import emit
from amc.options import bounded, seed_int


def register(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser("compare", help="fine-tunes of two or more policies: means, differences, bootstrap intervals",
                        description="Each --group is the fine-tunes of one policy (amc finetune --seed 0, 1, ...). "
                                    "Reads each folder's model.json (nothing is run) and prints every group's "
                                    "test and reward-set top-1, mean ± standard deviation, then the first group "
                                    "minus each other group: the difference of means with a percentile bootstrap "
                                    "95% interval, and how many same-seed pairs the first group leads on the "
                                    "test set. Example: amc bench compare --group ft-lat-* --group ft-uni-* "
                                    "--labels latency-AMC uniform")
    p.add_argument("--group", action="append", nargs="+", required=True, metavar="DIR",
                   help="checkpoint folders of one policy; give --group two or more times")
    p.add_argument("--labels", nargs="+", default=None,
                   help="one name per group (default: the folders' common prefix)")
    p.add_argument("--resamples", type=bounded(int, "--resamples", 100), default=20000,
                   help="bootstrap resamples (default 20000)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc.finetune_stats import compare_groups, table
    from amc.frontier import group_label

    labels = args.labels or [group_label([{"checkpoint": f} for f in g]) for g in args.group]
    res = compare_groups(args.group, labels, args.resamples, args.seed)
    emit({**res, "command": "amc " + " ".join(args._argv)}, args.json, table(res))
    return 0

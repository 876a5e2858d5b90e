"""``amc search``: find a per-layer pruning policy with AMC's DDPG agent (or a baseline).

The CLI sits above the agents (engine <- envs <- agents <- CLI): this module imports
:mod:`agents.search` inside :func:`run`, so ``amc --help`` stays fast.
"""
from __future__ import annotations

import argparse
import sys

from amc.cli.common import absolute, add_common, add_spec, emit, setup_threads, spec_from
from amc.errors import AmcError
from amc.options import add_options, values_given
from amc.spec import BUDGET, DATA, LATENCY, MODEL, PRUNER
from agents.config import AGENT, SEARCH, SearchConfig

# options that may go with --resume: they change what is shown, or what follows the search
# (--verify-top), not the search
_DISPLAY_ONLY = {"resume", "run", "quiet", "json", "func", "command", "_argv", "_parser", "verify_top"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="search a pruning policy with DDPG (AMC), TD3, SAC or random policies",
        description="AMC's search: one episode prunes every prunable layer once, and its reward comes "
                    "from one evaluation of the slim, reconstructed model on the reward set (held out of "
                    "the training split; the test set is never used). The best policy lands in "
                    "RUN/best_policy.json, ready for: amc prune --policy RUN/best_policy.json. The search "
                    "state is saved after every episode: a search stopped at any moment (Ctrl-C, SIGTERM, "
                    "even kill -9) continues with: amc search --resume RUN")
    add_spec(p, MODEL, DATA, PRUNER, BUDGET, LATENCY)
    add_common(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", help="run folder for config.json, episodes.jsonl, best_policy.json, tb/, state.pt "
                                     "(a new or empty folder)")
    where.add_argument("--resume", metavar="RUN",
                       help="continue the stopped search in RUN with the settings of RUN/config.json "
                            "(a finished one is only reported); takes no other setting but --verify-top K, "
                            "which times the K best policies of a latency search, finished or not, at its end")
    add_options(p, SearchConfig, [SEARCH])
    add_options(p.add_argument_group("agent (AMC's DDPG settings by default)"), SearchConfig, [AGENT])
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run, _parser=p)


def search_config_from(args: argparse.Namespace) -> SearchConfig:
    """The SearchConfig the command line describes, with the run options (device, threads)."""
    return SearchConfig(**values_given(args, SearchConfig), device=args.device, threads=args.threads).validate()


def run(args: argparse.Namespace) -> int:
    from agents.search import SearchInterrupted, resume_search, search

    try:
        if args.resume is not None:
            _check_resume_alone(args)
            res = resume_search(args.resume, progress=not args.quiet,
                                verify_top=getattr(args, "verify_top", None) or None)
            if res.get("resumed_at_episode") == res["episodes"]:
                sys.stderr.write(f"note: the search in {args.resume} has finished all its {res['episodes']} "
                                 "episodes; nothing to resume\n")
        else:
            setup_threads(args)
            spec = spec_from(args)
            spec = spec.replace(weights=absolute(spec.weights), data_dir=absolute(spec.data_dir))
            cfg = search_config_from(args)
            if "target" in args and cfg.reward != "acc":
                sys.stderr.write(f"note: --target-flops is ignored with --reward {cfg.reward} (no budget wall)\n")
            res = search(spec, cfg, args.run, progress=not args.quiet, command=["amc", *sys.argv[1:]])
    except SearchInterrupted as stop:
        sys.stderr.write(f"{stop}\n")
        return stop.exit_code
    _report(res, args.json)
    return 0


def _check_resume_alone(args: argparse.Namespace) -> None:
    """--resume takes every setting from config.json; a changed one would silently not apply."""
    parser = args._parser
    given = [a for a in vars(args) if a not in _DISPLAY_ONLY and getattr(args, a) != parser.get_default(a)]
    if given:
        names = ", ".join("--" + a.replace("_", "-") for a in sorted(given))
        raise AmcError(f"--resume takes its settings from RUN/config.json; drop {names}")


def _report(res: dict, as_json: bool) -> None:
    table = (f"best policy (episode {res['best_episode']} of {res['episodes']}): reward {res['best_reward']:.4f}, "
             f"reward-set top-1 {res['best_reward_top1']:.2f}% (unpruned {res['base_reward_top1']:.2f}%), "
             f"FLOPs {res['best_flops_ratio']:.3f}, params {res['best_params_ratio']:.3f}\n"
             f"preserve ratios: {' '.join(f'{r:.2f}' for r in res['best_ratios'])}\n"
             f"{res['seconds']:.1f} s ({res['seconds_per_episode']:.3f} s/episode); "
             f"wrote {res['run']}/best_policy.json; prune with: amc prune --policy {res['run']}/best_policy.json")
    if "verified" in res:
        v = res["verified"]
        table += (f"\nverified end to end: episode {v['chosen_episode']}, "
                  + ("the best measured at or under the target" if v["measured_within_target"]
                     else "none measured under the target, so the fastest")
                  + f"; prune with: amc prune --policy {res['run']}/verified_policy.json")
    emit(res, as_json, table)


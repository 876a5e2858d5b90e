"""``amc search``: find a per-layer pruning policy with AMC's DDPG agent (or a baseline).

The agents live outside the engine (``agents`` imports ``envs`` imports ``amc``), so this
module imports them only inside :func:`run`.
"""
from __future__ import annotations

import argparse
import sys

from amc.cli.common import add_common, add_data_args, add_max_cache_arg, add_model_args, emit, seed_int, setup_threads
from amc.errors import AmcError

# options that may go with --resume: they change what is shown, not the search
_RESUME_OPTIONS = {"resume", "run", "quiet", "json", "func", "command", "_argv", "_search_parser"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="search a pruning policy with DDPG (AMC), TD3, SAC or random policies",
        description="AMC's search: one episode prunes every prunable layer once, and its reward comes "
                    "from one evaluation of the slim, reconstructed model on the reward set (held out of "
                    "the training split; the test set is never used). The best policy lands in "
                    "RUN/best_policy.json, ready for: amc prune --policy RUN/best_policy.json. The search "
                    "state is saved after every episode: a search stopped at any moment (Ctrl-C, SIGTERM, "
                    "even kill -9) continues with: amc search --resume RUN")
    add_model_args(p)
    add_data_args(p)
    add_common(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", help="run folder for config.json, episodes.jsonl, best_policy.json, tb/, state.pt "
                                     "(a new or empty folder)")
    where.add_argument("--resume", metavar="RUN",
                       help="continue the stopped search in RUN with the settings of RUN/config.json "
                            "(a finished one is only reported); takes no other setting")
    p.add_argument("--save-every", type=int, default=1, metavar="N",
                   help="save the search state every N episodes (default 1; Ctrl-C and SIGTERM save it anyway)")
    p.add_argument("--reward", default="acc", choices=["acc", "flops", "params"],
                   help="acc: -Error with the budget wall; flops / params: -Error*log(FLOPs or params), "
                        "no wall (default acc)")
    p.add_argument("--target-flops", "--target", dest="target", type=float, default=None, metavar="R",
                   help="budget for --reward acc: fraction of FLOPs (or of params with --budget params) "
                        "to keep, in (0, 1] (default 0.5)")
    p.add_argument("--budget", default="flops", choices=["flops", "params"],
                   help="resource the wall constrains with --reward acc (default flops)")
    p.add_argument("--algo", default="ddpg", choices=["ddpg", "td3", "sac", "random"],
                   help="ddpg (AMC), td3, sac, or random: uniform random policies, the baseline (default ddpg)")
    p.add_argument("--episodes", type=int, default=400, help="episodes in all, warm-up included (default 400)")
    p.add_argument("--warmup", type=int, default=100,
                   help="episodes of uniform random actions before learning starts (default 100)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of everything random in the search (default 0)")
    p.add_argument("--lbound", type=float, default=0.2, help="smallest preserve ratio of a layer (default 0.2)")
    p.add_argument("--channel-round", type=int, default=1,
                   help="round kept channels to a multiple of this (default 1; 8 for ImageNet nets)")
    p.add_argument("--fill-budget", action="store_true",
                   help="add a lower action wall so every episode ends at the budget (an extension; "
                        "the paper's wall only caps)")
    p.add_argument("--coupled", default="skip", choices=["skip", "shared"],
                   help="residual-tied channels: skip them, or prune each set with one shared ratio (default skip)")
    p.add_argument("--criterion", default="l1", help="channel-selection criterion (default l1)")
    p.add_argument("--no-reconstruct", dest="reconstruct", action="store_false",
                   help="skip the least-squares refit of pruned layers")
    p.add_argument("--calib-batches", type=int, default=60, help="calibration batches for reconstruction (default 60)")
    p.add_argument("--calib-batch-size", type=int, default=50, help="images per calibration batch (default 50)")
    p.add_argument("--points-per-image", type=int, default=10,
                   help="sampled output positions per calibration image (default 10)")
    add_max_cache_arg(p)
    agent = p.add_argument_group("agent (AMC's DDPG settings by default)")
    agent.add_argument("--actor-lr", type=float, default=1e-4, help="actor learning rate (default 1e-4)")
    agent.add_argument("--critic-lr", type=float, default=1e-3, help="critic learning rate (default 1e-3)")
    agent.add_argument("--tau", type=float, default=0.01, help="soft target update rate (default 0.01)")
    agent.add_argument("--batch-size", type=int, default=64, help="transitions per update (default 64)")
    agent.add_argument("--buffer-episodes", type=int, default=100, help="replay capacity in episodes (default 100)")
    agent.add_argument("--hidden", type=int, nargs="+", default=[300, 300],
                       help="hidden layer sizes of actor and critic (default 300 300)")
    agent.add_argument("--sigma", type=float, default=0.5,
                       help="initial exploration sigma, in preserve-ratio units (default 0.5)")
    agent.add_argument("--sigma-decay", type=float, default=0.95, help="sigma's decay per episode (default 0.95)")
    p.add_argument("--eval-batch-size", type=int, default=None,
                   help="reward-set images per forward pass (default 256 on CPU, 1024 on CUDA)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run, _search_parser=p)


def run(args: argparse.Namespace) -> int:
    from agents.search import SearchConfig, SearchInterrupted, resume_search, run_search

    if args.resume is not None:
        _check_resume_alone(args)
        try:
            res = resume_search(args.resume, progress=not args.quiet)
        except SearchInterrupted as stop:
            sys.stderr.write(f"{stop}\n")
            return stop.exit_code
        if res.get("resumed_at_episode") == res["episodes"]:
            sys.stderr.write(f"note: the search in {args.resume} has finished all its {res['episodes']} episodes; "
                             "nothing to resume\n")
        _report(res, args.json)
        return 0
    setup_threads(args)
    cfg = SearchConfig(
        model=args.model, weights=_absolute(args.weights), width=args.width, dataset=args.dataset, data_dir=_absolute(args.data_dir),
        mean=args.mean, std=args.std, image_size=args.image_size, reward_set_size=args.reward_set_size,
        split_seed=args.split_seed, reward=args.reward, target=0.5 if args.target is None else args.target,
        budget=args.budget, lbound=args.lbound, fill_budget=args.fill_budget,
        channel_round=args.channel_round, coupled=args.coupled, criterion=args.criterion,
        reconstruct=args.reconstruct, calib_batches=args.calib_batches, calib_batch_size=args.calib_batch_size,
        points_per_image=args.points_per_image, algo=args.algo, episodes=args.episodes, warmup=args.warmup,
        hidden=list(args.hidden), actor_lr=args.actor_lr, critic_lr=args.critic_lr, tau=args.tau,
        batch_size=args.batch_size, buffer_episodes=args.buffer_episodes, sigma=args.sigma,
        sigma_decay=args.sigma_decay, seed=args.seed, device=args.device, eval_batch_size=args.eval_batch_size,
        threads=args.threads, save_every=args.save_every, max_cache_mb=args.max_cache_mb)
    cfg.validate()
    if args.target is not None and args.reward != "acc":
        sys.stderr.write(f"note: --target-flops is ignored with --reward {args.reward} (no budget wall)\n")
    try:
        res = run_search(cfg, args.run, progress=not args.quiet, command=["amc", *sys.argv[1:]])
    except SearchInterrupted as stop:
        sys.stderr.write(f"{stop}\n")
        return stop.exit_code
    _report(res, args.json)
    return 0


def _check_resume_alone(args: argparse.Namespace) -> None:
    """--resume takes every setting from config.json; a changed one would silently not apply."""
    parser = args._search_parser
    given = [a for a in vars(args) if a not in _RESUME_OPTIONS and getattr(args, a) != parser.get_default(a)]
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
    emit(res, as_json, table)


def _absolute(path: str | None) -> str | None:
    """Recorded in config.json: absolute, so the run can be exported from any folder."""
    from pathlib import Path

    return str(Path(path).resolve()) if path else None

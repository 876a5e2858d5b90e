"""``amc bench correlation``: which un-fine-tuned score predicts the fine-tuned accuracy (:mod:`amc.correlation`)."""
from __future__ import annotations

import argparse

from amc.cli.common import add_common, add_spec, emit, fresh_out_dir, setup_threads, spec_from
from amc.options import bounded, seed_int
from amc.spec import BUDGET, DATA, MODEL, PRUNER


def register(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser("correlation", help="rank correlation of policy scores with the fine-tuned accuracy",
                        description="Draws --policies random policies at the budget (with the lower wall, so each "
                                    "uses the whole budget) plus uniform; scores each without fine-tuning: on the "
                                    "reward set as the search does, after adaptive BN on each of --bn-counts "
                                    "calibration batches, and without reconstruction; fine-tunes each for "
                                    "--ft-epochs on the same --ft-images training images; reports Spearman's rho "
                                    "and Kendall's tau of every score against the fine-tuned reward-set top-1, "
                                    "and a scatter plot. The test set is not read.")
    add_spec(p, MODEL, DATA, PRUNER, BUDGET, skip=("bn_recal",))
    add_common(p)
    p.add_argument("--policies", type=bounded(int, "--policies", 2), default=30,
                   help="random policies besides uniform (default 30)")
    p.add_argument("--ft-epochs", type=bounded(int, "--ft-epochs", 1), default=1,
                   help="fine-tuning epochs per policy (default 1)")
    p.add_argument("--ft-images", type=bounded(int, "--ft-images", 1), default=15000,
                   help="training images fine-tuned on (default 15000)")
    p.add_argument("--ft-lr", type=bounded(float, "--ft-lr", 0, lo_open=True), default=0.01,
                   help="fine-tuning peak learning rate (default 0.01)")
    p.add_argument("--bn-counts", type=bounded(int, "--bn-counts", 1), nargs="+", default=[1, 5, 20],
                   help="adaptive-BN batch counts scored (default 1 5 20)")
    p.add_argument("--policy-seed", type=seed_int, default=0,
                   help="seed of the random policies and of the fine-tuning images (default 0)")
    p.add_argument("--out", required=True, help="folder for correlation.json and correlation.png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc.checkpoint import atomic_write_json
    from amc.correlation import correlation_bench, plot_correlation
    from amc.train import resolve_device

    setup_threads(args)
    spec = spec_from(args, fill_budget=True)
    resolve_device(args.device)
    out = fresh_out_dir(args.out)
    problem = spec.build(progress=not args.json)
    res = correlation_bench(problem, args.policies, args.ft_epochs, args.ft_images, args.bn_counts, args.ft_lr,
                            args.policy_seed, args.device, progress=not args.json)
    res.update(model=problem.model_spec.name, spec=spec.to_dict(), command="amc " + " ".join(args._argv))
    atomic_write_json(out / "correlation.json", res)
    plot_correlation(res, str(out / "correlation.png"))
    lines = [f"{res['model']}: {res['policies']} policies (uniform + random at {spec.target:g} {spec.budget}), "
             f"fine-tuned {args.ft_epochs} epoch(s) on {res['ft_images']} images",
             f"{'score':16} {'spearman':>9} {'kendall':>8}"]
    lines += [f"{s:16} {c['spearman']:9.3f} {c['kendall']:8.3f}" for s, c in res["correlation"].items()]
    lines.append(f"best: {res['best_score']}; uniform ranks {res['uniform_rank_after_ft']} of {res['policies']} "
                 f"after fine-tuning; wrote {out}/correlation.json and correlation.png")
    emit(res, args.json, "\n".join(lines))
    return 0

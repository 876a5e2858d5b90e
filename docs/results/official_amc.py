"""Run the official AMC search (mit-han-lab/amc, its files unmodified) on one of our base checkpoints.

The comparison in docs/results/quality.md ("The official code on the same MobileNet-V1"):

    git clone https://github.com/mit-han-lab/amc runs/official/amc-official    # commit 65363c8
    python docs/results/official_amc.py --base runs/exp/mbv1/base --seed 0 --out runs/official/mbv1-seed0
    python docs/results/official_amc.py --to-policy runs/official/mbv1-seed0/result.json \
        runs/exp/mbv1/base runs/official/mbv1-seed0/policy.json      # its pick, for amc prune --policy
    python docs/results/official_amc.py --plot docs/img/official-mbv1.png 93.45 \
        runs/bench/q13-mbv1/ddpg-seed0,runs/bench/q13-mbv1/ddpg-seed1,runs/bench/q13-mbv1/ddpg-seed2 \
        runs/official/mbv1-seed0,runs/official/mbv1-seed1

It needs the project's virtual environment (torch, numpy) and nothing of the official
requirements: AMC_OFFICIAL_DIR (default runs/official/amc-official) is put on sys.path, and
only shims go around it: CPU instead of .cuda(), numpy lstsq for sklearn's LinearRegression
(fit_intercept=False: the same least-squares solution), rejection sampling for scipy's
truncnorm, torch's SummaryWriter for tensorboardX, a terminal width for its progress printer
(it runs `stty size` at import), np.float, a scalar action for today's
numpy, a top-k accuracy with reshape for today's torch, its feature-recording hooks taken off
once the features are recorded, channels-last, and our data splits in place of its
get_split_dataset (reward set = our 5,000-image reward set; calibration = 60 batches of 50
images of our training part, drawn at random as its SubsetRandomSampler does). Its own
settings: 50% FLOPs, lbound 0.2, channel round 8, top-1, 100 warm-up episodes, 0.5 x 0.95^k
noise. Not part of the package and not tested: a harness for one measurement.
"""
import argparse, json, os, sys, time, types
from copy import deepcopy

import numpy as np
import torch
from torch import nn
import torchvision  # noqa: F401  (before the module shims below: torch._dynamo inspects module specs)

sys.path.insert(0, os.path.abspath(os.environ.get("AMC_OFFICIAL_DIR", "runs/official/amc-official")))

# --- shims ---------------------------------------------------------------------------------
np.float = float
torch.Tensor.cuda = lambda self, *a, **k: self
nn.Module.cuda = lambda self, *a, **k: self


class _LinearRegression:
    def __init__(self, fit_intercept=False):
        assert not fit_intercept

    def fit(self, X, Y):
        # the minimum-norm least-squares solution, as sklearn's, through the normal equations:
        # pinv(X'X) X'Y = pinv(X) Y, and 30,000 x c SVDs every layer of every episode are too slow here
        X = X.astype(np.float64)
        self.coef_ = np.linalg.lstsq(X.T @ X, X.T @ Y.astype(np.float64), rcond=None)[0].T
        return self


sk = types.ModuleType("sklearn"); lm = types.ModuleType("sklearn.linear_model")
lm.LinearRegression = _LinearRegression; sk.linear_model = lm
sys.modules["sklearn"] = sk; sys.modules["sklearn.linear_model"] = lm


class _TruncNorm:
    @staticmethod
    def rvs(a, b, loc, scale, size=1):
        loc = np.asarray(loc, dtype=float).reshape(-1)
        out = np.empty(size)
        for i in range(size):
            mu = loc[i if loc.size > 1 else 0]
            lo, hi = mu + np.asarray(a).reshape(-1)[0] * scale, mu + np.asarray(b).reshape(-1)[0] * scale
            while True:
                x = np.random.normal(mu, scale)
                if lo <= x <= hi:
                    out[i] = x
                    break
        return out


sp = types.ModuleType("scipy"); st = types.ModuleType("scipy.stats")
st.truncnorm = _TruncNorm; sp.stats = st
sys.modules["scipy"] = sp; sys.modules["scipy.stats"] = st

from torch.utils.tensorboard import SummaryWriter as _SW  # noqa: E402
tbx = types.ModuleType("tensorboardX")
tbx.SummaryWriter = lambda logdir=None, **k: _SW(log_dir=logdir, **k)
sys.modules["tensorboardX"] = tbx

import io  # noqa: E402
_popen = os.popen
os.popen = lambda cmd, *a: io.StringIO("24 80") if cmd == "stty size" else _popen(cmd, *a)
import amc_search  # noqa: E402  (the official script; its train() reads module globals)
from env.channel_pruning_env import ChannelPruningEnv  # noqa: E402
from lib.agent import DDPG  # noqa: E402
import env.channel_pruning_env as _cpe  # noqa: E402


def _accuracy(output, target, topk=(1,)):  # its lib.utils.accuracy with reshape: .view fails on today's torch
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum(0).mul_(100.0 / target.size(0)) for k in topk]


_cpe.accuracy = _accuracy
_step = ChannelPruningEnv.step
# today's numpy refuses float() of a 1-element array, which its agent returns
ChannelPruningEnv.step = lambda self, a: _step(self, float(np.asarray(a).reshape(-1)[0]))

from amc.checkpoint import load_state_dict, read_json  # noqa: E402
from amc.data import load_splits  # noqa: E402
from amc.models import ModelSpec, build_model  # noqa: E402


def to_policy(result_path, base, out):
    """The official search's best strategy as our policy file (so `amc prune --policy` can build it):
    its entry i is the kept share of the input channels of its i-th prunable layer (the 13
    pointwise convs, then the classifier), ours the same for the same layers."""
    meta = read_json(os.path.join(base, "model.json"))
    model = build_model(ModelSpec.from_dict(meta["model"]))
    layers = [(n, m) for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear)) and not (isinstance(m, nn.Conv2d) and m.groups == m.in_channels)]
    strategy = json.load(open(result_path))["best"]["strategy"]
    assert len(strategy) == len(layers), (len(strategy), len(layers))
    rows = []
    for i, ((name, m), r) in enumerate(zip(layers, strategy)):
        c = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
        rows.append({"layer": name, "channels": c, "kept": int(round(r * c))})
    json.dump({"layers": rows}, open(out, "w"), indent=1)


def plot(out, ours, official, uniform_ours):
    """Best-so-far and a 20-episode running mean of the reward-set top-1, our searches beside
    the official ones (their log.txt), with each side's uniform policy."""
    import re
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    curves = [(d, "ours", "tab:blue", [json.loads(l)["reward_top1"] for l in open(os.path.join(d, "episodes.jsonl"))])
              for d in ours]
    curves += [(d, "official", "tab:red", [float(m.group(1)) for m in re.finditer(r"acc: ([\d.]+), ratio",
                                                                                 open(os.path.join(d, "log.txt")).read())])
               for d in official]
    for d, who, color, acc in curves:
        acc = np.asarray(acc)
        axes[0].plot(np.maximum.accumulate(acc), color=color, alpha=0.8, label=f"{who} {os.path.basename(d.rstrip('/'))}")
        axes[1].plot(np.convolve(acc, np.ones(20) / 20, mode="valid"), color=color, alpha=0.6)
    uo = [json.load(open(os.path.join(d, "result.json")))["uniform"]["reward"] for d in official]
    for ax in axes:
        ax.axhline(uniform_ours, color="tab:blue", ls="--", lw=1)
        ax.axhline(float(np.mean(uo)), color="tab:red", ls="--", lw=1)
        ax.set_xlabel("episode")
    axes[0].set_title("best so far (dashed: each side's uniform)")
    axes[1].set_title("20-episode running mean")
    axes[0].set_ylabel("reward-set top-1 (%)")
    axes[0].set_ylim(uniform_ours - 3, max(max(c[3]) for c in curves) + 0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main():
    if sys.argv[1:2] == ["--to-policy"]:  # --to-policy RESULT BASE OUT
        return to_policy(*sys.argv[2:5])
    if sys.argv[1:2] == ["--plot"]:  # --plot OUT.png UNIFORM_OURS OURS_DIR,... OFFICIAL_DIR,...
        return plot(sys.argv[2], sys.argv[4].split(","), sys.argv[5].split(","), float(sys.argv[3]))
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=400)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--channel-round", type=int, default=8)
    p.add_argument("--out", required=True)
    cli = p.parse_args()
    torch.set_num_threads(cli.threads)

    sys.argv = ["amc_search.py", "--model", "mobilenet", "--dataset", "cifar", "--preserve_ratio", "0.5",
                "--acc_metric", "acc1", "--seed", str(cli.seed), "--train_episode", str(cli.episodes),
                "--channel_round", str(cli.channel_round), "--output", cli.out]
    args = amc_search.parse_args()
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    meta = read_json(os.path.join(cli.base, "model.json"))
    split = meta["split"]
    splits = load_splits(split["dataset"], seed=split["split_seed"], reward_set_size=split["reward_set_size"])
    model = build_model(ModelSpec.from_dict(meta["model"]))
    model.load_state_dict(load_state_dict(os.path.join(cli.base, "model.safetensors")))
    model.eval()
    model.to(memory_format=torch.channels_last)  # the layout CPU convs run fastest in; same numbers
    checkpoint = deepcopy(model.state_dict())

    # calibration: the official train loader is shuffle=False over a SubsetRandomSampler, i.e. random images
    g = np.random.RandomState(args.seed)
    idx = torch.from_numpy(g.permutation(len(splits.train))[: args.n_calibration_batches * args.data_bsize])
    calibration = splits.train.subset(idx)

    def init_data(self):
        self.train_loader = list(calibration.batches(args.data_bsize))
        self.val_loader = list(splits.reward.batches(500))

    ChannelPruningEnv._init_data = init_data
    env = ChannelPruningEnv(model, checkpoint, args.dataset, preserve_ratio=args.preserve_ratio,
                            n_data_worker=0, batch_size=args.data_bsize, args=args)

    # its feature-recording hooks stay on every layer and clone every activation of every
    # validation pass; the features are recorded by now, so take them off (results unchanged)
    for m in model.modules():
        if "forward" in vars(m):
            del m.forward
    t = time.time(); env._validate(env.val_loader, env.model); print(f"=> one reward-set pass: {time.time() - t:.2f} s")
    os.makedirs(cli.out, exist_ok=True)
    amc_search.args = args
    amc_search.tfwriter = _SW(log_dir=cli.out)
    amc_search.text_writer = open(os.path.join(cli.out, "log.txt"), "w")
    args.rmsize = args.rmsize * len(env.prunable_idx)
    agent = DDPG(env.layer_embedding.shape[1], 1, args)
    t0 = time.time()
    amc_search.train(args.train_episode, agent, env, cli.out)
    search_s = time.time() - t0

    test_loader = list(splits.test.batches(500))

    def replay(actions):
        env.reset()
        for a in actions:
            _, _, done, info = env.step(a)
        return info["accuracy"], env._validate(test_loader, env.model), info["compress_ratio"], list(info["strategy"])

    best = replay(env.best_strategy)
    # uniform in the official env: the largest constant action whose episode ends at <= 50% FLOPs
    lo, hi = 0.2, 1.0
    validate, env._validate = env._validate, lambda loader, model: 0.0  # FLOPs only while bisecting
    for _ in range(12):
        mid = (lo + hi) / 2
        env.reset()
        for _i in range(len(env.prunable_idx)):
            _, _, done, info = env.step(mid)
        lo, hi = (mid, hi) if info["compress_ratio"] <= 0.5 else (lo, mid)
    env._validate = validate
    uni = replay([lo] * len(env.prunable_idx))
    env.reset()
    base_reward, base_test = env._validate(env.val_loader, env.model), env._validate(test_loader, env.model)
    res = {"seed": cli.seed, "episodes": cli.episodes, "channel_round": cli.channel_round, "search_s": search_s,
           "base": {"reward": base_reward, "test": base_test},
           "best": dict(zip(["reward", "test", "flops_ratio", "strategy"], best)), "best_reward": env.best_reward,
           "uniform": dict(zip(["reward", "test", "flops_ratio", "strategy"], uni), action=lo)}
    json.dump(res, open(os.path.join(cli.out, "result.json"), "w"), indent=1)
    print(json.dumps({k: v for k, v in res.items() if k != "best"}, indent=1), res["best"])


if __name__ == "__main__":
    main()

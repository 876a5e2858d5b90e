"""The AMC search, top to bottom: config, set-up, the episodes, the result (paper §3, spec §1, §6).

1. Load the data and the trained model, and build the pruner once (layer graph, channel
   scores, cached least-squares statistics from the calibration images).
2. Build the environment: one step per prunable layer, one reward-set evaluation per episode.
3. Run ``episodes`` episodes with DDPG (TD3, SAC) or uniform random policies; the first
   ``warmup`` episodes of the learners are uniform random too, with no updates.
4. Every episode is logged; the best-reward policy is kept in ``best_policy.json``.

The test set is never touched: rewards, and the choice of the best policy, come from the
reward set only.
"""
from __future__ import annotations

import copy
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.utils import set_random_seed

from agents.buffers import EpisodeRewardBuffer
from agents.callbacks import EpisodeLog, SearchCallback
from agents.ddpg import ALGOS
from agents.noise import TruncatedNormalNoise
from amc.checkpoint import atomic_write_json
from amc.errors import AmcError
from envs.channel_pruning import ChannelPruningEnv
from envs.problem import load_problem
from envs.rewards import REWARDS


@dataclass
class SearchConfig:
    """Everything that decides a search; ``config.json`` in the run folder holds it resolved."""

    # --- what is pruned
    model: str = "plain20"
    """Zoo name, ``tv:NAME`` or ``path/to/file.py:factory``."""
    weights: str | None = None
    """State_dict file; zoo models default to the shipped weights for the dataset."""
    width: float | None = None
    """Width multiplier of a zoo model (None: that of the shipped weights, else 1.0)."""
    dataset: str = "fashion-mnist"
    """``fashion-mnist``, ``cifar10`` or ``imagefolder:PATH``."""
    data_dir: str | None = None
    """Where the dataset lies (else $AMC_DATA, the Debian package, then a download)."""
    mean: list[float] | None = None
    """Normalisation mean override (None: the dataset's)."""
    std: list[float] | None = None
    """Normalisation std override (None: the dataset's)."""
    image_size: int = 224
    """Image size for ``imagefolder:`` datasets."""
    reward_set_size: int = 5000
    """Training images held out as the reward set (spec §7: 5,000 for CIFAR-sized data)."""
    split_seed: int = 0
    """Seed of the reward-set split (keep it equal to the base model's training split)."""

    # --- the MDP
    reward: str = "acc"
    """``acc`` (-Error, budget wall on), ``flops`` or ``params`` (-Error * log(resource), no wall)."""
    target: float = 0.5
    """Budget for ``acc``: the fraction of the full FLOPs (or params, see ``budget``) to keep."""
    budget: str = "flops"
    """Resource the wall constrains with ``reward=acc``: ``flops`` or ``params``."""
    lbound: float = 0.2
    """Smallest preserve ratio of a layer (official: 0.2)."""
    channel_round: int = 1
    """Kept channels are rounded to a multiple of this (8 for ImageNet-sized nets)."""
    coupled: str = "skip"
    """Residual-tied channels: ``skip`` leaves them alone, ``shared`` prunes each set with one ratio."""
    criterion: str = "l1"
    """Channel-selection criterion (AMC: L1 norm of the consumer's weights)."""
    reconstruct: bool = True
    """Refit each pruned layer by least squares on the calibration images (spec §4)."""
    calib_batches: int = 60
    """Calibration batches from the training split (official: 60)."""
    calib_batch_size: int = 50
    """Images per calibration batch (official: 50)."""
    points_per_image: int = 10
    """Sampled output positions per calibration image (official: 10)."""

    # --- the search
    algo: str = "ddpg"
    """``ddpg`` (AMC), ``td3``, ``sac``, or ``random`` (uniform policies: the honest baseline)."""
    episodes: int = 400
    """Episodes in all, warm-up included (paper: 400)."""
    warmup: int = 100
    """Episodes of uniform random actions before the first update (paper: 100)."""
    hidden: list[int] = field(default_factory=lambda: [300, 300])
    """Hidden layers of the actor and of the critic (paper: 300-300)."""
    actor_lr: float = 1e-4
    """Actor's Adam learning rate."""
    critic_lr: float = 1e-3
    """Critic's Adam learning rate (also SAC's entropy coefficient's)."""
    tau: float = 0.01
    """Soft target update rate."""
    gamma: float = 1.0
    """Discount (1: every layer's choice counts fully towards the final reward)."""
    batch_size: int = 64
    """Transitions per gradient step."""
    buffer_episodes: int = 100
    """Replay buffer capacity in episodes (times the number of layers)."""
    sigma: float = 0.5
    """Initial sigma of the truncated-normal exploration, in preserve-ratio units."""
    sigma_decay: float = 0.95
    """Factor on sigma per episode after the warm-up."""
    baseline_rate: float = 0.5
    """Step size of the moving reward baseline subtracted from each batch (0: off)."""
    seed: int = 0
    """Seeds torch, numpy, the env, SB3, the noise, and the calibration sampling."""
    device: str = "cpu"
    """Where the pruned models are evaluated: ``cpu``, ``cuda`` or ``auto`` (the agent stays on CPU)."""
    eval_batch_size: int | None = None
    """Reward-set images per forward pass (None: 256 on CPU, 1024 on GPU)."""
    threads: int | None = None
    """torch CPU threads (None: torch's choice)."""

    @property
    def learns(self) -> bool:
        return self.algo != "random"

    def validate(self) -> None:
        """One readable AmcError for the first bad value (before any file is written)."""
        if self.reward not in REWARDS:
            raise AmcError(f"unknown reward {self.reward!r}; choose one of {', '.join(REWARDS)}")
        if self.algo not in (*ALGOS, "random"):
            raise AmcError(f"unknown algo {self.algo!r}; choose one of {', '.join([*ALGOS, 'random'])}")
        if self.target is None or not math.isfinite(self.target) or not (0.0 < self.target <= 1.0):
            raise AmcError(f"--target-flops must be in (0, 1], got {self.target}")
        if self.budget not in ("flops", "params"):
            raise AmcError(f"--budget must be flops or params, got {self.budget!r}")
        if not math.isfinite(self.lbound) or not (0.0 < self.lbound <= 1.0):
            raise AmcError(f"--lbound must be in (0, 1], got {self.lbound}")
        if self.channel_round < 1:
            raise AmcError(f"--channel-round must be >= 1, got {self.channel_round}")
        if self.episodes < 1:
            raise AmcError(f"--episodes must be >= 1, got {self.episodes}")
        if self.warmup < 0:
            raise AmcError(f"--warmup must be >= 0, got {self.warmup}")
        if self.learns and self.episodes <= self.warmup:
            raise AmcError(f"--episodes ({self.episodes}) must be greater than --warmup ({self.warmup}), "
                           "or the agent never learns")
        for name in ("actor_lr", "critic_lr", "tau", "sigma", "sigma_decay", "baseline_rate", "gamma"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise AmcError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")
        if not 0 < self.sigma_decay <= 1:
            raise AmcError(f"--sigma-decay must be in (0, 1], got {self.sigma_decay}")
        for name in ("batch_size", "buffer_episodes", "eval_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise AmcError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise AmcError(f"--hidden needs positive layer sizes, got {self.hidden}")


def make_agent(cfg: SearchConfig, env: ChannelPruningEnv) -> Any:
    """The SB3 learner for ``cfg.algo`` with AMC's settings (spec §6)."""
    layers = env.num_layers
    kwargs: dict[str, Any] = dict(
        policy="MlpPolicy", env=env, actor_lr=cfg.actor_lr, critic_lr=cfg.critic_lr,
        buffer_size=cfg.buffer_episodes * layers, learning_starts=cfg.warmup * layers,
        batch_size=cfg.batch_size, tau=cfg.tau, gamma=cfg.gamma,
        # update after each episode, one gradient step per transition of that episode
        train_freq=(1, "episode"), gradient_steps=-1,
        replay_buffer_class=EpisodeRewardBuffer, replay_buffer_kwargs={"baseline_rate": cfg.baseline_rate},
        policy_kwargs={"net_arch": list(cfg.hidden)}, seed=cfg.seed, device="cpu", verbose=0)
    if cfg.algo in ("ddpg", "td3"):
        # the env maps [0, 1] onto [lbound, 1]; SB3 samples on [-1, 1]: rescale sigma to match
        scale = 2.0 / (1.0 - cfg.lbound) if cfg.lbound < 1.0 else 0.0
        kwargs["action_noise"] = TruncatedNormalNoise(cfg.sigma * scale, cfg.sigma_decay, cfg.warmup,
                                                      -1.0, 1.0, seed=cfg.seed)
    agent = ALGOS[cfg.algo](**kwargs)
    agent.set_logger(Logger(folder=None, output_formats=[]))  # our callback writes the curves
    return agent


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("amc", "torch", "torchvision", "stable-baselines3", "gymnasium", "numpy", "torch-pruning"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def prepare_run_dir(path: str | Path) -> Path:
    """An empty, writable run folder; an existing non-empty one is refused (no silent overwrite)."""
    run = Path(path)
    if run.exists() and not run.is_dir():
        raise AmcError(f"{run} exists and is not a folder")
    if run.is_dir() and any(run.iterdir()):
        raise AmcError(f"run folder {run} already exists and is not empty; choose another --run or delete it")
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe = run / ".amc_write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise AmcError(f"cannot write to {run}: {e.strerror or e}") from e
    return run


def run_random(env: ChannelPruningEnv, log: EpisodeLog, episodes: int, seed: int) -> None:
    """The baseline: every action uniform on [0, 1], i.e. every preserve ratio on [lbound, 1]."""
    env.action_space.seed(seed)
    env.reset(seed=seed)
    for e in range(episodes):
        if e:
            env.reset()
        done = False
        while not done:
            _, _, done, _, info = env.step(env.action_space.sample())
        log.on_episode(info)


def run_search(cfg: SearchConfig, run_dir: str | Path, progress: bool = True,
               command: list[str] | None = None) -> dict[str, Any]:
    """Run one search into ``run_dir``; returns the best policy's numbers."""
    from amc.train import resolve_device

    cfg.validate()
    device = resolve_device(cfg.device)
    run = prepare_run_dir(run_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_random_seed(cfg.seed)

    problem = load_problem(cfg.model, cfg.weights, cfg.dataset, cfg.data_dir, cfg.width, cfg.reward_set_size,
                           cfg.split_seed, cfg.mean, cfg.std, cfg.image_size, cfg.calib_batches,
                           cfg.calib_batch_size, cfg.points_per_image, cfg.reconstruct, cfg.coupled,
                           cfg.criterion, cfg.seed, progress=progress)
    pruner = problem.pruner
    env = ChannelPruningEnv(problem=problem, reward=cfg.reward, target=cfg.target, budget=cfg.budget,
                            lbound=cfg.lbound, channel_round=cfg.channel_round, reconstruct=cfg.reconstruct,
                            device=device, eval_batch_size=cfg.eval_batch_size)
    base_top1 = env.reward_top1(copy.deepcopy(pruner.model).to(device) if device.type != "cpu" else pruner.model)
    atomic_write_json(run / "config.json", {
        "config": asdict(cfg), "algo": cfg.algo, "device": str(device), "threads": torch.get_num_threads(),
        "eval_batch_size": env.eval_batch_size,
        "model": problem.model_spec, "weights": problem.weights,
        "split": problem.splits.record if problem.splits else None,
        "wall": env.target is not None, "num_layers": pruner.num_layers,
        "layers": [{"group": g.index, "layer": g.layer, "channels": g.channels} for g in pruner.graph.groups],
        "skipped": [{"layers": n, "reason": r} for n, r in pruner.graph.skipped],
        "flops": pruner.flops.full, "params": pruner.params.full, "base_reward_top1": base_top1,
        "versions": package_versions(), "command": command or sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S")})

    best_extra = {"reward_mode": cfg.reward, "target": env.target, "budget": cfg.budget, "algo": cfg.algo,
                  "seed": cfg.seed, "base_reward_top1": base_top1}
    agent = make_agent(cfg, env) if cfg.learns else None
    log = EpisodeLog(run, pruner, cfg.episodes, best_extra, progress=progress)
    t0 = time.perf_counter()
    try:
        if agent is not None:
            agent.learn(total_timesteps=cfg.episodes * pruner.num_layers, callback=SearchCallback(log), log_interval=1)
        else:
            run_random(env, log, cfg.episodes, cfg.seed)
    finally:
        log.close()
    seconds = time.perf_counter() - t0
    best = log.best
    assert best is not None
    return {"best_reward": best["reward"], "best_reward_top1": best["reward_top1"],
            "best_flops_ratio": best["flops_ratio"], "best_params_ratio": best["params_ratio"],
            "best_episode": best["episode"], "best_ratios": best["ratios"], "episodes": log.episodes,
            "base_reward_top1": base_top1, "seconds": round(seconds, 2),
            "seconds_per_episode": round(seconds / max(1, log.episodes), 4), "run": str(run)}

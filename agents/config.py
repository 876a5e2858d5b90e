"""SearchConfig: how a search runs (reward, agent, episodes); what it prunes is an :class:`amc.spec.PruneSpec`.

A run's ``config.json`` holds both, flattened into one object under ``"config"`` (the layout
of every earlier version); :func:`read_config` and :func:`config_dict` are its one reader and
writer. No heavy import here: the command line builds its options from these fields.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from amc.errors import AmcError
from amc.options import option
from amc.spec import PruneSpec

REWARD_NAMES = ("acc", "flops", "params")
"""The reward modes of :mod:`envs.rewards` (a test keeps the two equal)."""
ALGO_NAMES = ("ddpg", "td3", "sac", "random")
"""The learners of :mod:`agents.ddpg`, and ``random``, the baseline (a test keeps them equal)."""
SEARCH, AGENT = "search", "agent"


@dataclass
class SearchConfig:
    """Everything that decides a search besides its spec (docs/method.md#ddpg-settings)."""

    reward: str = option("acc", "acc: -Error under the budget wall; flops / params: -Error*log(FLOPs or params), "
                                "no wall", group=SEARCH, choices=REWARD_NAMES)
    algo: str = option("ddpg", "ddpg (AMC), td3, sac, or random: uniform random policies, the baseline",
                       group=SEARCH, choices=ALGO_NAMES)
    episodes: int = option(400, "episodes in all, warm-up included (paper: 400)", group=SEARCH)
    warmup: int = option(100, "episodes of uniform random actions before learning starts (paper: 100)",
                         group=SEARCH)
    hidden: list[int] = option(help="hidden layer sizes of actor and critic (paper: 300 300)", group=AGENT,
                               type=int, nargs="+", factory=lambda: [300, 300])
    actor_lr: float = option(1e-4, "actor learning rate", group=AGENT)
    critic_lr: float = option(1e-3, "critic learning rate (also SAC's entropy coefficient's)", group=AGENT)
    tau: float = option(0.01, "soft target update rate", group=AGENT)
    gamma: float = 1.0
    """Discount (1: every layer's choice counts fully towards the final reward)."""
    batch_size: int = option(64, "transitions per gradient step", group=AGENT)
    buffer_episodes: int = option(100, "replay capacity in episodes (times the number of layers)", group=AGENT)
    sigma: float = option(0.5, "initial exploration sigma, in preserve-ratio units", group=AGENT)
    sigma_decay: float = option(0.95, "sigma's decay per episode after the warm-up", group=AGENT)
    baseline_rate: float = 0.5
    """Step size of the moving reward baseline subtracted from each batch (0: off)."""
    device: str = "cpu"
    """Where the pruned models are evaluated: ``cpu``, ``cuda`` or ``auto`` (the agent stays on CPU)."""
    eval_batch_size: int | None = option(None, "reward-set images per forward pass (none: 256 on CPU, 1024 on "
                                               "CUDA)", group=SEARCH)
    threads: int | None = None
    """torch CPU threads (None: torch's choice)."""
    save_every: int = option(1, "save the search state every N episodes (Ctrl-C and SIGTERM save it anyway)",
                             group=SEARCH, metavar="N")

    @property
    def learns(self) -> bool:
        return self.algo != "random"

    def validate(self) -> "SearchConfig":
        """One readable AmcError for the first bad value (before any file is written); returns self."""
        if self.reward not in REWARD_NAMES:
            raise AmcError(f"unknown reward {self.reward!r}; choose one of {', '.join(REWARD_NAMES)}")
        if self.algo not in ALGO_NAMES:
            raise AmcError(f"unknown algo {self.algo!r}; choose one of {', '.join(ALGO_NAMES)}")
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
        for name in ("batch_size", "buffer_episodes", "eval_batch_size", "threads", "save_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise AmcError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise AmcError(f"--hidden needs positive layer sizes, got {self.hidden}")
        return self


def config_dict(spec: PruneSpec, cfg: SearchConfig) -> dict[str, Any]:
    """The flat ``"config"`` object of ``config.json`` (and of the saved search state)."""
    return {**spec.to_dict(), **dataclasses.asdict(cfg)}


def read_config(d: Any, source: str = "config") -> tuple[PruneSpec, SearchConfig]:
    """The spec and the search settings of a flat ``"config"`` object, validated.

    Settings an older version did not record take their defaults; a setting this version
    does not know is refused, so a run is never half-read.
    """
    if not isinstance(d, dict):
        raise AmcError(f"{source} lacks the search settings (a 'config' object); was it written by amc search?")
    spec = PruneSpec.from_dict(d, source)
    spec_keys = {f.name for f in dataclasses.fields(PruneSpec)}
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    unknown = sorted(set(d) - spec_keys - known)
    if unknown:
        raise AmcError(f"{source} has settings this version of amc does not know: {', '.join(unknown)}")
    try:
        cfg = SearchConfig(**{k: v for k, v in d.items() if k in known}).validate()
    except TypeError as e:
        raise AmcError(f"{source}: {e}") from e
    except AmcError as e:
        raise AmcError(f"{source}: {e}") from None
    return spec, cfg

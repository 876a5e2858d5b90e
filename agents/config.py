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

REWARD_NAMES = ("acc", "flops", "params", "latency")
"""The reward modes of :mod:`envs.rewards` (a test keeps the two equal)."""
ALGO_NAMES = ("ddpg", "td3", "sac", "random")
"""The learners of :mod:`agents.ddpg`, and ``random``, the baseline (a test keeps them equal)."""
SEARCH, AGENT = "search", "agent"


def _decay(text: str) -> float | str:
    """argparse type of --sigma-decay: a number, or ``auto``."""
    return "auto" if text == "auto" else float(text)


@dataclass
class SearchConfig:
    """Everything that decides a search besides its spec (docs/method.md#ddpg-settings)."""

    reward: str = option("acc", "acc: -Error under the budget wall; flops / params / latency: -Error*log(FLOPs, "
                                "params or predicted latency in us), no wall", group=SEARCH, choices=REWARD_NAMES)
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
    sigma_decay: float | str = option(0.95, "sigma's decay per episode after the warm-up, or auto: the decay that "
                                            "reaches --sigma-final (else --sigma-min) at the last episode",
                                      group=AGENT, type=_decay)
    sigma_min: float = option(0.05, "floor of the exploration sigma, in preserve-ratio units, never above --sigma "
                                     "(0: none, the paper's schedule; 0.05 won the quality benchmark, "
                                     "docs/method.md#ddpg-settings)",
                              group=AGENT)
    sigma_final: float | None = option(None, "with --sigma-decay auto: sigma at the last episode (none: --sigma-min)",
                                       group=AGENT)
    action_map: str = option("linear", "action -> preserve ratio: linear onto [lbound, 1], or clip: the action is the "
                                       "ratio, raised to lbound (the official code)", group=AGENT,
                             choices=("linear", "clip"))
    stored_action: str = option("applied", "action kept in the replay buffer: applied (after the wall and rounding) "
                                           "or agent (the agent's own, the official code)", group=AGENT,
                                choices=("applied", "agent"))
    last_layer_init: str = option("default", "init of the actor's and critic's last layers: default (PyTorch's, as "
                                             "the official code) or uniform (U(+-3e-3), the DDPG paper)",
                                  group=AGENT, choices=("default", "uniform"))
    warmup_convention: str = option("ours", "ours: --warmup random episodes; official: --warmup + 1, as the "
                                            "official loop counts", group=SEARCH, choices=("ours", "official"))
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
    envs: int = option(1, "environments stepped side by side, each in its own process; the agent updates after "
                          "every N episodes (--episodes and the warm-up must be multiples of N)", group=SEARCH,
                       metavar="N")
    verify_top: int = option(0, "with a latency table: at the end, time the K best distinct policies end to end and "
                                "write RUN/verified_policy.json, the best one measured at or under the target "
                                "(0: off)", group=SEARCH, metavar="K")

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
        random_episodes = self.warmup + (self.warmup_convention == "official")
        if self.learns and self.episodes <= random_episodes:
            raise AmcError(f"--episodes ({self.episodes}) must be greater than --warmup ({random_episodes}), "
                           "or the agent never learns")
        for name in ("actor_lr", "critic_lr", "tau", "sigma", "sigma_min", "baseline_rate", "gamma"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise AmcError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")
        if self.sigma_decay == "auto":
            final = self.sigma_min if self.sigma_final is None else self.sigma_final
            if not (math.isfinite(final) and final > 0):
                raise AmcError("--sigma-decay auto needs a final sigma > 0: --sigma-final or --sigma-min")
        elif not (isinstance(self.sigma_decay, (int, float)) and 0 < self.sigma_decay <= 1):
            raise AmcError(f"--sigma-decay must be in (0, 1] or auto, got {self.sigma_decay}")
        elif self.sigma_final is not None:
            raise AmcError("--sigma-final goes with --sigma-decay auto")
        for name, allowed in (("action_map", ("linear", "clip")), ("stored_action", ("applied", "agent")),
                              ("last_layer_init", ("default", "uniform")), ("warmup_convention", ("ours", "official"))):
            if getattr(self, name) not in allowed:
                raise AmcError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                               f"got {getattr(self, name)!r}")
        if self.envs > 1:
            warm = random_episodes if self.learns else 0
            extra = "" if self.warmup_convention == "ours" else \
                f": --warmup {self.warmup}, plus 1 under --warmup-convention official"
            for what, n in ((f"--episodes ({self.episodes})", self.episodes), (f"the warm-up ({warm}{extra})", warm)):
                if n % self.envs:
                    raise AmcError(f"{what} must be a multiple of --envs ({self.envs}): the episodes run in "
                                   "rounds of N")
        if self.verify_top < 0:
            raise AmcError(f"--verify-top must be >= 0, got {self.verify_top}")
        for name in ("batch_size", "buffer_episodes", "eval_batch_size", "threads", "save_every", "envs"):
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

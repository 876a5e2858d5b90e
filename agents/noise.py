"""AMC's exploration noise: a truncated normal around the actor's output (paper §3.4).

After the warm-up episodes, AMC's DDPG explores by sampling each action from a normal
distribution centred on the actor's output mu(s), truncated to the action bounds, with
sigma = 0.5 decayed by 0.95 per episode:

    a ~ TN(mu(s), sigma_e^2, [low, high]),  sigma_e = max(sigma_min, sigma_0 * decay ** (e - warmup))

SB3's action noises are added to the actor output and the sum is clipped, which piles
probability mass onto the bounds; a truncated normal renormalises it inside them instead.
So this noise is *sampled around* mu (:meth:`TruncatedNormalNoise.sample`); the agents in
:mod:`agents.ddpg` call it in place of SB3's ``mu + noise()``.

The paper's schedule is ``sigma_min = 0`` and ``decay = 0.95``: fifty episodes after the
warm-up sigma is down to 8% of sigma_0 and exploration has all but stopped, whatever the
number of learning episodes. Two additions keep it going (see ``docs/method.md``):

- a floor, ``sigma_min`` (the search's default is 0.05 in preserve-ratio units,
  :class:`agents.config.SearchConfig`; this class's default stays the paper's 0);
- ``decay="auto"``: the decay that brings sigma_0 down to a final sigma (``sigma_final``,
  else ``sigma_min``) exactly at the last episode, so the schedule stretches with the number
  of learning episodes.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np
from stable_baselines3.common.noise import ActionNoise

_STD_NORMAL = NormalDist()


def noise_scale(lbound: float, action_map: str = "linear") -> float:
    """The factor from preserve-ratio units (the paper's sigma 0.5) to SB3's [-1, 1] action scale,
    the one this noise samples on.

    ``"linear"``: the env maps [0, 1] onto [lbound, 1], so one unit of ratio is
    ``2 / (1 - lbound)`` units on [-1, 1] (0 when lbound is 1: nothing to explore).
    ``"clip"``: the action is the ratio, so the factor is 2 (the official code's sigma is in
    ratio units on [0, 1] too: ``lib/agent.py``, ``select_action``).
    """
    if action_map == "clip":
        return 2.0
    if action_map != "linear":
        raise ValueError(f"action_map must be linear or clip, got {action_map!r}")
    return 2.0 / (1.0 - lbound) if lbound < 1.0 else 0.0


def auto_decay(sigma0: float, sigma_final: float, warmup: int, episodes: int) -> float:
    """The per-episode decay that takes sigma from ``sigma0`` at episode ``warmup`` (the
    first one after ``warmup`` warm-up episodes) to ``sigma_final`` at episode
    ``episodes - 1`` (the last one): ``(sigma_final / sigma0) ** (1 / (episodes - 1 - warmup))``.

    1 when there is at most one learning episode or ``sigma_final >= sigma0``.
    """
    if not (math.isfinite(sigma_final) and sigma_final > 0):
        raise ValueError(f"decay 'auto' needs a final sigma > 0 (sigma_final, else sigma_min), got {sigma_final}")
    steps = int(episodes) - 1 - int(warmup)
    if steps <= 0 or sigma0 <= 0 or sigma_final >= sigma0:
        return 1.0
    return float((sigma_final / sigma0) ** (1.0 / steps))


class TruncatedNormalNoise(ActionNoise):
    """Truncated-normal exploration with AMC's per-episode sigma decay (paper §3.4).

    sigma at episode e (0-based) is ``max(min(sigma_min, sigma_0), sigma_0 * decay ** max(0, e - warmup))``.

    Args:
        sigma: sigma_0, in the units of the space it samples in (the agents pass SB3's
            [-1, 1] action scale, so the paper's 0.5 in preserve-ratio units is rescaled;
            ``sigma_min`` and ``sigma_final`` are in the same units).
        decay: sigma's factor per episode after the warm-up (paper: 0.95), or ``"auto"``:
            the factor that reaches ``sigma_final`` (else ``sigma_min``, which must then be
            > 0) at the last of ``episodes`` episodes (:func:`auto_decay`).
        warmup: episodes of uniform random actions before this noise is used; the decay
            counts from the end of the warm-up.
        low, high: the bounds the samples stay within.
        seed: seed of the noise's own generator (kept apart from numpy's global one).
        sigma_min: the floor sigma never decays below (0: none, the paper's schedule); a
            floor above ``sigma`` is cut to ``sigma``, so ``sigma=0`` turns the noise off.
        sigma_final: with ``decay="auto"``, sigma at the last episode (None: ``sigma_min``).
        episodes: the episodes of the search, warm-up included; needed by ``decay="auto"``.
    """

    def __init__(self, sigma: float = 0.5, decay: float | str = 0.95, warmup: int = 0, low: float = -1.0,
                 high: float = 1.0, seed: int | None = None, sigma_min: float = 0.0,
                 sigma_final: float | None = None, episodes: int | None = None) -> None:
        super().__init__()
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
        if not (math.isfinite(sigma_min) and sigma_min >= 0):
            raise ValueError(f"sigma_min must be a finite number >= 0, got {sigma_min}")
        if not low < high:
            raise ValueError(f"need low < high, got [{low}, {high}]")
        self.sigma0, self.warmup, self.sigma_min = float(sigma), int(warmup), float(sigma_min)
        self.decay_spec: float | str = decay
        """The decay as given (a number or ``"auto"``); :attr:`decay` is the number in use."""
        if decay == "auto":
            if episodes is None:
                raise ValueError("decay 'auto' needs the number of episodes")
            final = self.sigma_min if sigma_final is None else float(sigma_final)
            self.decay = auto_decay(self.sigma0, final, self.warmup, episodes)
        elif isinstance(decay, str):
            raise ValueError(f"decay must be a number in (0, 1] or 'auto', got {decay!r}")
        else:
            if not (0 < decay <= 1):
                raise ValueError(f"decay must be in (0, 1], got {decay}")
            if sigma_final is not None:
                raise ValueError("sigma_final only applies to decay 'auto'")
            self.decay = float(decay)
        self.sigma_final, self.episodes = sigma_final, episodes
        self.low, self.high = float(low), float(high)
        self.rng = np.random.default_rng(seed)
        self.episode = 0
        """The current episode (0-based); the agent sets it before sampling."""

    def sigma_at(self, episode: int) -> float:
        """sigma for ``episode`` (0-based)."""
        # the floor never lifts sigma above sigma_0: ``sigma=0`` means no noise, floor or not
        floor = min(self.sigma_min, self.sigma0)
        return max(floor, self.sigma0 * self.decay ** max(0, int(episode) - self.warmup))

    @property
    def sigma(self) -> float:
        """sigma for the current episode."""
        return self.sigma_at(self.episode)

    def reset(self, indices: Any = None) -> None:
        """SB3 calls this at the start of ``learn`` and after every episode (with the env's
        index when there are several); the episode index comes from the agent instead
        (:attr:`episode`), so there is nothing to reset."""

    def sample(self, mu: np.ndarray) -> np.ndarray:
        """One action per entry of ``mu``, from TN(mu, sigma^2) truncated to [low, high].

        Inverse-CDF sampling: u is uniform between the CDF values of the two bounds, which
        is exact and needs no rejection loop however small the inside mass.
        """
        mu = np.clip(np.asarray(mu, dtype=np.float64), self.low, self.high)
        sigma = self.sigma
        u = self.rng.random(mu.shape)
        if sigma <= 0:
            return mu.astype(np.float32)
        out = np.empty_like(mu)
        for i, (m, v) in enumerate(zip(mu.flat, u.flat)):
            lo = _STD_NORMAL.cdf((self.low - m) / sigma)
            hi = _STD_NORMAL.cdf((self.high - m) / sigma)
            p = min(max(lo + v * (hi - lo), 1e-300), 1 - 1e-16)
            out.flat[i] = m + sigma * _STD_NORMAL.inv_cdf(p)
        return np.clip(out, self.low, self.high).astype(np.float32)

    def schedule(self) -> dict:
        """What decides sigma at each episode, resolved: sigma_0, the decay in use, the floor, the warm-up."""
        return {"sigma0": self.sigma0, "decay": self.decay, "sigma_min": self.sigma_min, "warmup": self.warmup}

    def state_dict(self) -> dict:
        """The episode index and the generator's exact state (plain ints, for resuming), and the
        resolved schedule, so a state is not restored into a noise with another schedule."""
        return {"episode": int(self.episode), "rng": self.rng.bit_generator.state, "schedule": self.schedule()}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("schedule")  # states saved before the schedule was recorded have none
        if saved is not None:
            own = self.schedule()
            if set(saved) != set(own) or any(not math.isclose(float(saved[k]), float(own[k]), rel_tol=1e-12,
                                                              abs_tol=0.0) for k in own):
                raise ValueError(f"the saved exploration schedule {saved} differs from this one {own}")
        self.episode = int(state["episode"])
        self.rng.bit_generator.state = state["rng"]

    def __call__(self) -> np.ndarray:
        raise TypeError("TruncatedNormalNoise is sampled around the actor's output: call sample(mu); "
                        "use it with the agents of agents.ddpg")

    def __repr__(self) -> str:
        return (f"TruncatedNormalNoise(sigma={self.sigma0}, decay={self.decay}, sigma_min={self.sigma_min}, "
                f"warmup={self.warmup}, bounds=[{self.low}, {self.high}], episode={self.episode})")

"""AMC's exploration noise: a truncated normal around the actor's output (paper §3.4, spec §6).

After the warm-up episodes, AMC's DDPG explores by sampling each action from a normal
distribution centred on the actor's output mu(s), truncated to the action bounds, with
sigma = 0.5 decayed by 0.95 per episode:

    a ~ TN(mu(s), sigma_e^2, [low, high]),  sigma_e = sigma_0 * decay ** (e - warmup)

SB3's action noises are added to the actor output and the sum is clipped, which piles
probability mass onto the bounds; a truncated normal renormalises it inside them instead.
So this noise is *sampled around* mu (:meth:`TruncatedNormalNoise.sample`); the agents in
:mod:`agents.ddpg` call it in place of SB3's ``mu + noise()``.
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
from stable_baselines3.common.noise import ActionNoise

_STD_NORMAL = NormalDist()


class TruncatedNormalNoise(ActionNoise):
    """Truncated-normal exploration with AMC's per-episode sigma decay (paper §3.4).

    Args:
        sigma: sigma_0, in the units of the space it samples in (the agents pass SB3's
            [-1, 1] action scale, so the paper's 0.5 in preserve-ratio units is rescaled).
        decay: sigma's factor per episode after the warm-up (paper: 0.95).
        warmup: episodes of uniform random actions before this noise is used; the decay
            counts from the end of the warm-up.
        low, high: the bounds the samples stay within.
        seed: seed of the noise's own generator (kept apart from numpy's global one).
    """

    def __init__(self, sigma: float = 0.5, decay: float = 0.95, warmup: int = 0, low: float = -1.0,
                 high: float = 1.0, seed: int | None = None) -> None:
        super().__init__()
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
        if not (0 < decay <= 1):
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if not low < high:
            raise ValueError(f"need low < high, got [{low}, {high}]")
        self.sigma0, self.decay, self.warmup = float(sigma), float(decay), int(warmup)
        self.low, self.high = float(low), float(high)
        self.rng = np.random.default_rng(seed)
        self.episode = 0
        """The current episode (0-based); the agent sets it before sampling."""

    @property
    def sigma(self) -> float:
        """sigma for the current episode."""
        return self.sigma0 * self.decay ** max(0, self.episode - self.warmup)

    def reset(self) -> None:
        """SB3 calls this at the start of ``learn`` and after every episode; the episode
        index comes from the agent instead (:attr:`episode`), so there is nothing to reset."""

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

    def state_dict(self) -> dict:
        """The episode index and the generator's exact state (plain ints, for resuming)."""
        return {"episode": int(self.episode), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.episode = int(state["episode"])
        self.rng.bit_generator.state = state["rng"]

    def __call__(self) -> np.ndarray:
        raise TypeError("TruncatedNormalNoise is sampled around the actor's output: call sample(mu); "
                        "use it with the agents of agents.ddpg")

    def __repr__(self) -> str:
        return (f"TruncatedNormalNoise(sigma={self.sigma0}, decay={self.decay}, warmup={self.warmup}, "
                f"bounds=[{self.low}, {self.high}], episode={self.episode})")

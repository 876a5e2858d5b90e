"""AMC's agents: SB3's DDPG (and TD3, SAC) with the two things SB3 lacks (paper §3.4, spec §6).

- :class:`SplitLearningRate`: Adam with one learning rate for the actor (1e-4) and another
  for the critic (1e-3). SB3 has a single ``learning_rate`` for every optimizer.
- :class:`TruncatedNormalExploration`: the warm-up of uniform random actions, then actions
  sampled from a truncated normal around mu(s) (:class:`agents.noise.TruncatedNormalNoise`)
  in place of SB3's clipped ``mu(s) + noise``.

The rest is SB3 as it is: DDPG is TD3 with its tricks off; ``gamma = 1``, ``tau = 0.01``,
batch 64 and the 300-300 networks are constructor arguments (see
:func:`agents.search.make_agent`). The final-reward replay buffer is
:class:`agents.buffers.EpisodeRewardBuffer`.

SB3's actor ends in ``tanh`` on [-1, 1], rescaled to the env's [0, 1]; that is the paper's
sigmoid up to a factor of 2 in the pre-activation.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.utils import update_learning_rate

from agents.noise import TruncatedNormalNoise


class SplitLearningRate:
    """Separate, constant Adam learning rates for the actor and the critic (spec §6).

    A mixin for SB3's actor-critic algorithms: put it before the algorithm class and pass
    ``actor_lr`` and ``critic_lr``. Any other optimizer (SAC's entropy coefficient) gets
    the critic's rate.
    """

    def __init__(self, *args: Any, actor_lr: float = 1e-4, critic_lr: float = 1e-3, **kwargs: Any) -> None:
        self.actor_lr, self.critic_lr = float(actor_lr), float(critic_lr)
        kwargs["learning_rate"] = self.critic_lr
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()  # type: ignore[misc]
        update_learning_rate(self.actor.optimizer, self.actor_lr)  # type: ignore[attr-defined]

    def _update_learning_rate(self, optimizers: list[th.optim.Optimizer] | th.optim.Optimizer) -> None:
        actor_optimizer = self.actor.optimizer  # type: ignore[attr-defined]
        for opt in optimizers if isinstance(optimizers, list) else [optimizers]:
            update_learning_rate(opt, self.actor_lr if opt is actor_optimizer else self.critic_lr)


class TruncatedNormalExploration:
    """AMC's exploration schedule (paper §3.4): warm-up, then truncated normal around mu(s).

    During the first ``learning_starts`` steps (the warm-up episodes times the layers) the
    actions are uniform over the action space and nothing is learned. Afterwards, when the
    action noise is a :class:`TruncatedNormalNoise`, each action is sampled from it around
    the actor's deterministic output; any other noise falls back to SB3's behaviour.
    """

    def _sample_action(self, learning_starts: int, action_noise: ActionNoise | None = None,
                       n_envs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(action_noise, TruncatedNormalNoise):
            return super()._sample_action(learning_starts, action_noise, n_envs)  # type: ignore[misc]
        if self.num_timesteps < learning_starts:  # type: ignore[attr-defined]
            unscaled = np.array([self.action_space.sample() for _ in range(n_envs)])  # type: ignore[attr-defined]
            scaled = self.policy.scale_action(unscaled)  # type: ignore[attr-defined]
        else:
            mu, _ = self.predict(self._last_obs, deterministic=True)  # type: ignore[attr-defined]
            action_noise.episode = self._episode_num  # type: ignore[attr-defined]
            scaled = action_noise.sample(self.policy.scale_action(mu))  # type: ignore[attr-defined]
        return self.policy.unscale_action(scaled), scaled  # type: ignore[attr-defined]


class AmcDDPG(SplitLearningRate, TruncatedNormalExploration, DDPG):
    """DDPG as in AMC: split learning rates and truncated-normal exploration."""


class AmcTD3(SplitLearningRate, TruncatedNormalExploration, TD3):
    """TD3 with AMC's learning rates and exploration (twin critics, delayed actor updates)."""


class AmcSAC(SplitLearningRate, SAC):
    """SAC with AMC's learning rates; it explores with its own stochastic policy."""


ALGOS = {"ddpg": AmcDDPG, "td3": AmcTD3, "sac": AmcSAC}

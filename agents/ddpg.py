"""AMC's agents: SB3's DDPG (and TD3, SAC) with what SB3 lacks (paper §3.4, ``docs/method.md``).

- :class:`SplitLearningRate`: Adam with one learning rate for the actor (1e-4) and another
  for the critic (1e-3). SB3 has a single ``learning_rate`` for every optimizer.
- :class:`TruncatedNormalExploration`: the warm-up of uniform random actions, then actions
  sampled from a truncated normal around mu(s) (:class:`agents.noise.TruncatedNormalNoise`)
  in place of SB3's clipped ``mu(s) + noise``.
- :class:`LastLayerInit`: optionally, the last layers of the actor and critic drawn from
  uniform(-3e-3, 3e-3) as in the DDPG paper (Lillicrap et al., 2016, §7); by default they
  keep PyTorch's init, which is also what the official AMC code ends up with.

The rest is SB3 as it is: DDPG is TD3 with its tricks off; ``gamma = 1``, ``tau = 0.01``,
batch 64 and the 300-300 networks are constructor arguments (see
:func:`agents.search.make_agent`). The final-reward replay buffer is
:class:`agents.buffers.EpisodeRewardBuffer`; :func:`warmup_steps` gives SB3's
``learning_starts`` under our warm-up count or the official one.

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
    """Separate, constant Adam learning rates for the actor and the critic (docs/method.md#ddpg-settings).

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
    the actor's deterministic output; any other noise falls back to SB3's behaviour. With
    several envs (``--envs N``) one generator samples the N actions of a step, and sigma is
    that of the round's first episode.
    """

    def _setup_learn(self, *args: Any, **kwargs: Any) -> Any:
        # SB3 wraps the noise of several envs in a VectorizedActionNoise of deep copies (the
        # same generator state N times); ours samples one action per env from one generator
        noise = self.action_noise  # type: ignore[has-type]
        if isinstance(noise, TruncatedNormalNoise):
            self.action_noise = None
        try:
            return super()._setup_learn(*args, **kwargs)  # type: ignore[misc]
        finally:
            self.action_noise = noise

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


LAST_LAYER_INITS = ("default", "uniform")
WARMUP_CONVENTIONS = ("ours", "official")


def _last_linear(module: th.nn.Module) -> th.nn.Linear:
    linears = [m for m in module.modules() if isinstance(m, th.nn.Linear)]
    if not linears:
        raise ValueError(f"no linear layer in {type(module).__name__}")
    return linears[-1]


class LastLayerInit:
    """The initialisation of the actor's and critic's output layers.

    ``last_layer_init="default"`` keeps SB3's networks as they are built: PyTorch's default
    init on every layer. The official AMC code has the same: its ``--init_w 0.003`` is parsed
    (``amc_search.py``) but the use of it is commented out (``lib/agent.py``, ``DDPG.__init__``),
    and its ``Actor``/``Critic`` have no ``init_weights``.

    ``last_layer_init="uniform"`` draws the weights and biases of the last linear layer of
    the actor (each of its output heads: SAC's mean and log-std) and of every critic from
    uniform(-init_w, init_w), init_w = 3e-3, as the DDPG paper does (Lillicrap et al., 2016,
    §7: "final layer weights and biases ... [-3e-3, 3e-3]"), so the first policy outputs
    and Q estimates are near zero. (ghliu/pytorch-ddpg, the code AMC's agent descends from,
    draws the weights only.) The target networks are then copied from the new weights.

    A mixin for SB3's actor-critic algorithms, before the algorithm class.
    """

    def __init__(self, *args: Any, last_layer_init: str = "default", init_w: float = 3e-3, **kwargs: Any) -> None:
        if last_layer_init not in LAST_LAYER_INITS:
            raise ValueError(f"last_layer_init must be one of {', '.join(LAST_LAYER_INITS)}, got {last_layer_init!r}")
        if not (np.isfinite(init_w) and init_w > 0):
            raise ValueError(f"init_w must be a finite number > 0, got {init_w}")
        self.last_layer_init, self.init_w = last_layer_init, float(init_w)
        super().__init__(*args, **kwargs)

    def output_layers(self) -> list[th.nn.Linear]:
        """The layers :attr:`last_layer_init` applies to: the actor's output layers, then the critics'."""
        actor = self.actor  # type: ignore[attr-defined]
        if hasattr(actor, "log_std"):  # SAC: a latent trunk, then the mean and log-std heads
            heads = [_last_linear(actor.mu), _last_linear(actor.log_std)]
        else:
            heads = [_last_linear(actor.mu)]
        return heads + [_last_linear(q) for q in self.critic.q_networks]  # type: ignore[attr-defined]

    def _setup_model(self) -> None:
        super()._setup_model()  # type: ignore[misc]
        if self.last_layer_init == "default":
            return
        with th.no_grad():
            for layer in self.output_layers():
                layer.weight.uniform_(-self.init_w, self.init_w)
                if layer.bias is not None:
                    layer.bias.uniform_(-self.init_w, self.init_w)
        for net, target in (("actor", "actor_target"), ("critic", "critic_target")):
            if getattr(self, target, None) is not None:
                getattr(self, target).load_state_dict(getattr(self, net).state_dict())


def warmup_steps(warmup: int, layers: int, convention: str = "ours") -> int:
    """SB3's ``learning_starts`` for ``warmup`` warm-up episodes of ``layers`` steps.

    - ``"ours"``: ``warmup * layers``. Episodes 0 .. warmup-1 are uniform random; episode
      ``warmup`` is the first played by the actor (with sigma_0), and the first gradient steps
      follow it (SB3 trains once ``num_timesteps > learning_starts``).
    - ``"official"``: ``(warmup + 1) * layers``, as the official loop counts
      (``amc_search.py``, ``train``: ``if episode <= args.warmup: random_action()``, and
      ``update_policy()`` only ``if episode > args.warmup``): warmup + 1 random episodes
      (0 .. warmup), episode ``warmup + 1`` is the first played by the actor, with
      sigma_0 * decay (``lib/agent.py``, ``select_action``: ``decay ** (episode - warmup)``),
      and the first updates follow it.

    Either way the noise keeps ``warmup`` as its own: sigma at a given episode index is the
    same in both; the official convention only spends one more episode at random.
    """
    if convention not in WARMUP_CONVENTIONS:
        raise ValueError(f"warmup convention must be one of {', '.join(WARMUP_CONVENTIONS)}, got {convention!r}")
    return (int(warmup) + (1 if convention == "official" else 0)) * int(layers)


class AmcDDPG(SplitLearningRate, LastLayerInit, TruncatedNormalExploration, DDPG):
    """DDPG as in AMC: split learning rates and truncated-normal exploration."""


class AmcTD3(SplitLearningRate, LastLayerInit, TruncatedNormalExploration, TD3):
    """TD3 with AMC's learning rates and exploration (twin critics, delayed actor updates)."""


class AmcSAC(SplitLearningRate, LastLayerInit, SAC):
    """SAC with AMC's learning rates; it explores with its own stochastic policy."""


ALGOS = {"ddpg": AmcDDPG, "td3": AmcTD3, "sac": AmcSAC}

"""AMC's MDP as a Gymnasium environment (paper §3; docs/method.md#the-loop).

One episode prunes the whole network, one prunable layer (channel group) per step:

- observation: the 11-feature layer embedding s_t, each feature in [0, 1] (docs/method.md#state-the-11-features);
- action: one number in [0, 1], mapped linearly onto a preserve ratio in [lbound, 1];
- the engine's :class:`~amc.budget.PruningState` applies the action wall and rounds to whole
  channels; the ratio actually kept is a_t in the next embedding and in ``info``;
- the reward is 0 until the last layer; then the slim, reconstructed model is evaluated
  once on the reward set (no fine-tuning) and the episode's reward is returned, with
  ``terminated=True``.

The env has no randomness of its own: a seeded ``reset`` and the same actions give the same
episode, bit for bit.

A reward is always finite: when the evaluation yields NaN or inf (a broken custom model, a
numerically unstable slim model), the episode is scored as the worst possible reward of the
mode, ``reward(error=1, full FLOPs, full params)`` (-1 for ``acc``, -log(full FLOPs) for
``flops``, -log(full params) for ``params``), with top-1 0, and ``info["nonfinite"]`` holds
what the evaluation gave. A NaN never reaches the agent or its replay buffer.
"""
from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from amc.bn_recal import recalibrate_bn
from amc.data import ImageSet
from amc.errors import AmcError
from amc.problem import Problem
from amc.pruner import ChannelPruner
from amc.spec import PruneSpec
from amc.train import top1
from envs.rewards import get_reward


class ChannelPruningEnv(gym.Env):
    """Prune a trained CNN layer by layer; the reward comes from the reward set.

    Pass either prebuilt objects (``pruner`` and ``reward_set``, e.g. in tests, or a built
    ``problem``) or the fields of a :class:`~amc.spec.PruneSpec` (``model``, ``weights``,
    ``dataset``, ...), from which the problem is built.

    Args:
        pruner: a :class:`~amc.pruner.ChannelPruner` of the trained model.
        reward_set: an :class:`~amc.data.ImageSet`, or normalised ``(images, labels)`` tensors.
        reward: ``acc`` (-Error, with the wall), ``flops`` or ``params`` (no wall); see
            :mod:`envs.rewards`.
        target: the budget as a fraction of the full FLOPs (or params, see ``budget``); only
            used by rewards with the wall. None turns the wall off.
        budget: ``flops`` or ``params``: the resource the wall constrains.
        lbound: the smallest preserve ratio (official: 0.2).
        channel_round: kept channels are rounded to a multiple of this.
        fill_budget: add a lower wall, so every episode ends within rounding of the target
            (our extension, on by default as in :class:`~amc.spec.PruneSpec`; the paper has the
            upper wall only).
        reconstruct: refit each consumer layer by least squares (needs calibration in ``pruner``).
        device: where the slim model is evaluated.
        eval_batch_size: images per forward pass on the reward set (None: 256 on CPU, where
            small batches stay in cache and ran 2.5x faster than 1000 on plain20; 1024 on GPU).
        problem: a built :class:`~amc.problem.Problem` (takes precedence).
        action_map: ``linear`` maps the action in [0, 1] onto [lbound, 1]; ``clip`` takes it as
            the preserve ratio, raised to lbound (the official code; see :meth:`preserve_ratio`).
        bn_batches: calibration images to re-estimate each pruned model's BatchNorm statistics
            on before scoring it (adaptive BN; None: the problem's, else off).
        **spec_fields: ``model``, ``weights``, ``dataset``, ``data_dir``, ... of a
            :class:`~amc.spec.PruneSpec`, when no pruner is given.
    """

    metadata = {"render_modes": []}

    def __init__(self, pruner: ChannelPruner | None = None,
                 reward_set: ImageSet | tuple[torch.Tensor, torch.Tensor] | None = None, *,
                 reward: str = "acc", target: float | None = 0.5, budget: str = "flops", lbound: float = 0.2,
                 channel_round: int = 1, fill_budget: bool = True, reconstruct: bool = True, device: str | torch.device = "cpu",
                 eval_batch_size: int | None = None, problem: Problem | None = None,
                 action_map: str = "linear", bn_batches: list[torch.Tensor] | None = None,
                 **spec_fields: Any) -> None:
        super().__init__()
        if action_map not in ("linear", "clip"):  # see preserve_ratio
            raise AmcError(f"action_map must be linear or clip, got {action_map!r}")
        self.action_map = action_map
        if problem is None and pruner is None:
            problem = PruneSpec(reconstruct=reconstruct, **spec_fields).build()
        elif spec_fields:
            raise TypeError(f"pass either a pruner or model arguments, not both: {sorted(spec_fields)}")
        if problem is not None:
            pruner, reward_set = problem.pruner, problem.reward_set if reward_set is None else reward_set
            bn_batches = problem.bn_batches if bn_batches is None else bn_batches
        if reward_set is None:
            raise AmcError("the environment needs a reward set")
        if budget not in ("flops", "params", "latency"):
            raise AmcError(f"budget must be 'flops', 'params' or 'latency', got {budget!r}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise AmcError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
        self.pruner = pruner
        self.reward_fn = get_reward(reward)
        self.target = target if self.reward_fn.wall else None
        self.budget, self.lbound, self.channel_round = budget, lbound, channel_round
        self.reconstruct = reconstruct and pruner.cache is not None
        self.device = torch.device(device)
        self.eval_batch_size = eval_batch_size or (256 if self.device.type == "cpu" else 1024)
        # the PruningState validates lbound, target and reachability of the budget
        self.state = pruner.state(self.target, lbound, channel_round, budget, fill=fill_budget)
        if reward == "latency" and pruner.latency is None:
            raise AmcError("the latency reward needs a latency table (PruneSpec.build with latency=True)")
        # under a latency budget the state's resource features are in latency units
        self.embedding = pruner.latency_embedding if budget == "latency" else pruner.embedding
        x, y = _reward_tensors(reward_set)
        self.reward_x, self.reward_y = x.to(self.device), y.to(self.device)
        self.bn_batches = [b.to(self.device) for b in bn_batches or []]

        self.observation_space = spaces.Box(0.0, 1.0, (11,), np.float32)
        self.action_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.applied: list[float] = []

    # ------------------------------------------------------------------ the MDP

    @property
    def num_layers(self) -> int:
        return self.pruner.num_layers

    def preserve_ratio(self, action: float) -> float:
        """The action in [0, 1] as a preserve ratio in [lbound, 1].

        ``action_map="linear"`` (ours): ``lbound + (1 - lbound) * action``, the whole action
        range is used. ``"clip"`` (the official code): the action *is* the ratio, raised to
        lbound when below it (``env/channel_pruning_env.py``, ``_action_wall``: clip to [0, 1],
        then ``max`` with the layer's lbound), so actions in [0, lbound] all give lbound.
        """
        if self.action_map == "clip":
            return min(max(float(action), self.lbound), 1.0)
        return self.lbound + (1.0 - self.lbound) * action

    def action_of(self, preserve_ratio: float) -> float:
        """The inverse map, clipped into the action space (rounding may keep less than lbound)."""
        if self.action_map == "clip":
            return float(np.clip(preserve_ratio, 0.0, 1.0))
        return float(np.clip((preserve_ratio - self.lbound) / (1.0 - self.lbound), 0.0, 1.0)) \
            if self.lbound < 1.0 else 1.0

    def _observe(self, t: int, a_prev: float) -> np.ndarray:
        obs = self.embedding(t, self.state.counts, a_prev)
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.state.reset()
        self.applied = []
        return self._observe(0, 1.0), {"layer": self.pruner.graph.groups[0].layer, "t": 0}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.state.done:
            raise RuntimeError("episode finished; call reset()")
        a = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        if not np.isfinite(a):
            raise ValueError(f"action must be finite, got {a}")
        t = self.state.t
        applied = self.state.step(self.preserve_ratio(min(max(a, 0.0), 1.0)))
        self.applied.append(applied)
        info: dict[str, Any] = {"layer": self.pruner.graph.groups[t].layer, "t": t, "preserve_ratio": applied,
                                "applied_action": self.action_of(applied)}
        if not self.state.done:
            return self._observe(t + 1, applied), 0.0, False, False, info
        info.update(self.evaluate_policy(self.state.counts))
        info["ratios"] = list(self.applied)
        return self._observe(t, applied), info["reward"], True, False, info

    # ------------------------------------------------------------------ the one expensive op

    def evaluate_policy(self, counts: list[int]) -> dict[str, Any]:
        """Prune to ``counts``, evaluate once on the reward set, and score the episode."""
        slim = self.pruner.prune(counts, reconstruct=self.reconstruct).to(self.device)
        if self.bn_batches:
            recalibrate_bn(slim, self.bn_batches, self.device)
        top1 = self.reward_top1(slim)
        flops, params = self.pruner.flops(counts), self.pruner.params(counts)
        latency = self.pruner.latency
        info: dict[str, Any] = {}
        latency_us = None
        if latency is not None:  # the table's prediction: recorded with every episode
            ms = latency(counts)
            info.update(latency_ms=ms, latency_ratio=ms / latency.full)
            latency_us = 1000.0 * ms
        error = 1.0 - top1 / 100.0
        reward = self.reward_fn(error, flops, params, latency_us)
        if not (math.isfinite(top1) and math.isfinite(reward)):
            info["nonfinite"] = {"reward": reward, "reward_top1": top1}
            top1, error, reward = 0.0, 1.0, self.worst_reward
        return {"reward": reward, "reward_top1": top1, "error": error,
                "flops": flops, "params": params, "flops_ratio": flops / self.pruner.flops.full,
                "params_ratio": params / self.pruner.params.full, "counts": [int(c) for c in counts], **info}

    @property
    def worst_reward(self) -> float:
        """The lowest reward the mode can give (error 1 at full size): the score of an episode
        whose evaluation is not a finite number."""
        return self.reward_fn(1.0, self.pruner.flops.full, self.pruner.params.full,
                              self._latency_us(self.pruner.flops.full_counts()))

    def _latency_us(self, counts: list[int]) -> float | None:
        return None if self.pruner.latency is None else 1000.0 * self.pruner.latency(counts)

    def reward_top1(self, model: torch.nn.Module) -> float:
        """Top-1 accuracy (percent) on the reward set, in big batches of cached tensors."""
        return top1(model, self.reward_x, self.reward_y, self.device, self.eval_batch_size)


def _reward_tensors(reward_set: ImageSet | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images and labels of a reward set (an ImageSet or a ready ``(x, y)`` pair)."""
    if isinstance(reward_set, ImageSet):
        return reward_set.tensors()
    if isinstance(reward_set, (tuple, list)) and len(reward_set) == 2:
        x, y = reward_set
        x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
        if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
            raise AmcError(f"reward set must be images (N, C, H, W) and labels (N,), "
                           f"got {tuple(x.shape)} and {tuple(y.shape)}")
        return x, y
    raise AmcError(f"reward_set must be an ImageSet or an (images, labels) pair, got {type(reward_set).__name__}")

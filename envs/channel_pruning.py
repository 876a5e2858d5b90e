"""AMC's MDP as a Gymnasium environment (paper §3, spec §1-§3, §5).

One episode prunes the whole network, one prunable layer (channel group) per step:

- observation: the 11-feature layer embedding s_t, each feature in [0, 1] (spec §2);
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

from amc.data import ImageSet
from amc.errors import AmcError
from amc.pruner import ChannelPruner
from envs.problem import PruningProblem, load_problem, reward_tensors
from envs.rewards import get_reward


class ChannelPruningEnv(gym.Env):
    """Prune a trained CNN layer by layer; the reward comes from the reward set.

    Pass either prebuilt objects (``pruner`` and ``reward_set``, e.g. in tests) or plain
    strings (``model``, ``weights``, ``dataset``, ... forwarded to
    :func:`envs.problem.load_problem`).

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
            (an extension, off by default: the paper has the upper wall only).
        reconstruct: refit each consumer layer by least squares (needs calibration in ``pruner``).
        device: where the slim model is evaluated.
        eval_batch_size: images per forward pass on the reward set (None: 256 on CPU, where
            small batches stay in cache and ran 2.5x faster than 1000 on plain20; 1024 on GPU).
        problem: a prebuilt :class:`~envs.problem.PruningProblem` (takes precedence).
        **problem_kwargs: ``model``, ``weights``, ``dataset``, ``data_dir``, ... for
            :func:`~envs.problem.load_problem`, when no pruner is given.
    """

    metadata = {"render_modes": []}

    def __init__(self, pruner: ChannelPruner | None = None,
                 reward_set: ImageSet | tuple[torch.Tensor, torch.Tensor] | None = None, *,
                 reward: str = "acc", target: float | None = 0.5, budget: str = "flops", lbound: float = 0.2,
                 channel_round: int = 1, fill_budget: bool = False, reconstruct: bool = True, device: str | torch.device = "cpu",
                 eval_batch_size: int | None = None, problem: PruningProblem | None = None,
                 **problem_kwargs: Any) -> None:
        super().__init__()
        if problem is None and pruner is None:
            problem = load_problem(reconstruct=reconstruct, **problem_kwargs)
        elif problem_kwargs:
            raise TypeError(f"pass either a pruner or model arguments, not both: {sorted(problem_kwargs)}")
        if problem is not None:
            pruner, reward_set = problem.pruner, problem.reward_set if reward_set is None else reward_set
        if reward_set is None:
            raise AmcError("the environment needs a reward set")
        if budget not in ("flops", "params"):
            raise AmcError(f"budget must be 'flops' or 'params', got {budget!r}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise AmcError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
        self.problem = problem
        self.pruner = pruner
        self.reward_fn = get_reward(reward)
        self.target = target if self.reward_fn.wall else None
        self.budget, self.lbound, self.channel_round = budget, lbound, channel_round
        self.reconstruct = reconstruct and pruner.cache is not None
        self.device = torch.device(device)
        self.eval_batch_size = eval_batch_size or (256 if self.device.type == "cpu" else 1024)
        # the PruningState validates lbound, target and reachability of the budget
        self.state = pruner.state(self.target, lbound, channel_round, budget, fill=fill_budget)
        x, y = reward_tensors(reward_set)
        self.reward_x, self.reward_y = x.to(self.device), y.to(self.device)

        self.observation_space = spaces.Box(0.0, 1.0, (11,), np.float32)
        self.action_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.applied: list[float] = []

    # ------------------------------------------------------------------ the MDP

    @property
    def num_layers(self) -> int:
        return self.pruner.num_layers

    def preserve_ratio(self, action: float) -> float:
        """The action in [0, 1] as a preserve ratio in [lbound, 1]."""
        return self.lbound + (1.0 - self.lbound) * action

    def action_of(self, preserve_ratio: float) -> float:
        """The inverse map, clipped into the action space (rounding may keep less than lbound)."""
        return float(np.clip((preserve_ratio - self.lbound) / (1.0 - self.lbound), 0.0, 1.0)) \
            if self.lbound < 1.0 else 1.0

    def _observe(self, t: int, a_prev: float) -> np.ndarray:
        obs = self.pruner.embedding(t, self.state.counts, a_prev)
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
        top1 = self.reward_top1(slim)
        flops, params = self.pruner.flops(counts), self.pruner.params(counts)
        error = 1.0 - top1 / 100.0
        reward = self.reward_fn(error, flops, params)
        info: dict[str, Any] = {}
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
        return self.reward_fn(1.0, self.pruner.flops.full, self.pruner.params.full)

    @torch.inference_mode()
    def reward_top1(self, model: torch.nn.Module) -> float:
        """Top-1 accuracy (percent) on the reward set, in big batches of cached tensors."""
        model.eval()
        if self.device.type == "cpu":  # matches the channels-last cached reward tensors
            model.to(memory_format=torch.channels_last)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for i in range(0, len(self.reward_y), self.eval_batch_size):
            out = model(self.reward_x[i:i + self.eval_batch_size])
            correct += (out.argmax(1) == self.reward_y[i:i + self.eval_batch_size]).sum()
        return 100.0 * int(correct) / len(self.reward_y)

"""AMC's replay buffer: every transition carries its episode's final reward (paper §3.4).

AMC's reward only exists once the whole network is pruned and evaluated, so the official
code holds an episode's transitions until it ends and then stores each of them with the
final reward (``amc_search.py``, ``train``: the trajectory ``T`` is replayed into
``agent.observe`` once ``done``). It also centres every sampled batch with a moving-average
baseline (``lib/agent.py``, ``update_policy``):

    b <- b + 0.5 * (mean(r_batch) - b),   r <- r - b

Which action a transition holds is a choice (``stored_action``):

- ``"applied"`` (our default): the preserve ratio actually kept, after the action wall and
  the rounding to whole channels, mapped back to the action scale, so the critic learns
  the value of what was done. This is a departure from the official code (see
  ``docs/method.md``), not something it does.
- ``"agent"``: the action the agent chose, as the official code stores it (``amc_search.py``
  appends ``action``, the output of ``random_action``/``select_action``, before the env's
  ``_action_wall`` changes it).

SB3's :class:`~stable_baselines3.common.buffers.ReplayBuffer` does the storage and the
sampling; this subclass adds only those things, a guard against non-finite rewards, and
``state_dict``/``load_state_dict`` so a stopped search resumes with the very same buffer.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize


class EpisodeRewardBuffer(ReplayBuffer):
    """Holds an episode's transitions until it ends, then writes them with its final reward.

    Args:
        buffer_size, observation_space, action_space, device, n_envs, **kwargs: as for
            SB3's ReplayBuffer. With several envs (``--envs N``) their episodes must run in
            lockstep, ending at the same step, as AMC's do (one step per prunable layer).
        baseline_rate: the moving baseline's step size (official: 0.5); 0 turns it off.
        stored_action: ``"applied"`` (default) stores the action the env applied, read from
            ``info[applied_action_key]``; ``"agent"`` stores the agent's own action, as the
            official code does (SB3's ``buffer_action``: the sampled action on [-1, 1]).
        applied_action_key: the ``info`` key holding the applied action in the env's action
            space, for ``stored_action="applied"``; None stores the agent's action too.
    """

    STORED_ACTIONS = ("applied", "agent")

    def __init__(self, buffer_size: int, observation_space: spaces.Space, action_space: spaces.Box,
                 device: Any = "auto", n_envs: int = 1, baseline_rate: float = 0.5,
                 stored_action: str = "applied", applied_action_key: str | None = "applied_action",
                 **kwargs: Any) -> None:
        if stored_action not in self.STORED_ACTIONS:
            raise ValueError(f"stored_action must be one of {', '.join(self.STORED_ACTIONS)}, got {stored_action!r}")
        super().__init__(buffer_size, observation_space, action_space, device, n_envs=n_envs, **kwargs)
        self.baseline_rate = baseline_rate
        self.stored_action = stored_action
        self.applied_action_key = applied_action_key if stored_action == "applied" else None
        self.baseline: float | None = None
        self.pending: list[tuple] = []

    def add(self, obs: np.ndarray, next_obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
            done: np.ndarray, infos: list[dict[str, Any]]) -> None:
        """Queue one step; on the episode's last step, store all of them with its reward."""
        infos = list(infos) if infos else [{} for _ in range(self.n_envs)]
        if self.applied_action_key is not None and all(self.applied_action_key in i for i in infos):
            action = self._to_buffer_scale([i[self.applied_action_key] for i in infos])
        # the vec env reuses its arrays, so keep copies until the episode ends
        self.pending.append((np.array(obs), np.array(next_obs), np.array(action), np.array(done),
                             [dict(i) for i in infos]))
        ended = np.asarray(done).reshape(-1).astype(bool)
        if not ended.any():
            return
        if not ended.all():
            self.pending = []
            raise ValueError("the episodes of several envs must end at the same step")
        final = np.asarray(reward, dtype=np.float32).reshape(self.n_envs)
        if not np.isfinite(final).all():
            # the env scores a failed evaluation with a finite worst reward; anything else is a bug
            self.pending = []
            raise ValueError(f"non-finite episode reward {', '.join(str(float(v)) for v in final)}: "
                             "refusing to store it")
        for o, no, a, d, inf in self.pending:
            super().add(o, no, a, final, d, inf)
        self.pending = []

    def _to_buffer_scale(self, applied: Any) -> np.ndarray:
        """An action in the env's Box as SB3 stores it: rescaled to [-1, 1]."""
        low, high = self.action_space.low, self.action_space.high
        a = np.asarray(applied, dtype=np.float32).reshape(self.n_envs, -1)
        return (2.0 * (a - low) / (high - low) - 1.0).astype(np.float32)

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """A uniform batch whose rewards are centred by the moving baseline."""
        batch = super().sample(batch_size, env)
        if self.baseline_rate <= 0:
            return batch
        mean = float(batch.rewards.mean())
        # the official code starts the baseline at the first batch's mean
        self.baseline = mean if self.baseline is None else self.baseline + self.baseline_rate * (mean - self.baseline)
        return batch._replace(rewards=batch.rewards - self.baseline)

    # ------------------------------------------------------------------ resuming a search

    _ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")

    def state_dict(self) -> dict[str, Any]:
        """A copy of everything that decides future samples: the stored transitions (as CPU
        tensors, so ``torch.load(weights_only=True)`` reads them back), the write position and
        the moving baseline. Only between episodes: a half-finished episode has no reward yet."""
        if self.pending:
            raise RuntimeError("the buffer holds an unfinished episode; save it between episodes")
        arrays = {name: torch.from_numpy(np.array(getattr(self, name), copy=True))
                  for name in self._ARRAYS if getattr(self, name, None) is not None}
        return {"arrays": arrays, "pos": int(self.pos), "full": bool(self.full), "baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; shapes and dtypes must match this buffer's."""
        arrays = state["arrays"]
        for name in self._ARRAYS:
            own = getattr(self, name, None)
            if own is None:
                continue
            saved = arrays[name].numpy()
            if saved.shape != own.shape or saved.dtype != own.dtype:
                raise ValueError(f"saved replay buffer {name} is {saved.dtype}{list(saved.shape)}, "
                                 f"this buffer {own.dtype}{list(own.shape)}")
            np.copyto(own, saved)
        pos = int(state["pos"])
        if not 0 <= pos < self.buffer_size:
            raise ValueError(f"saved replay buffer position {pos} is outside [0, {self.buffer_size})")
        baseline = state["baseline"]
        if baseline is not None and not math.isfinite(baseline):
            raise ValueError(f"saved reward baseline is {baseline}")
        self.pos, self.full, self.baseline = pos, bool(state["full"]), baseline
        self.pending = []

"""The stable-baselines3 internals amc relies on still exist (pin: ``stable-baselines3>=2.2,<3``).

:mod:`agents.resume` saves and restores a search through SB3's private attributes (the
counters, the last observation, ``_get_torch_save_params``) and the replay buffer's fields;
:mod:`agents.ddpg` overrides SB3's private hooks; :mod:`agents.callbacks` reads the rollout's
``locals``. None of it is SB3's public API, so a new SB3 release may rename or drop it
silently: these tests build the agents of :mod:`agents.ddpg` on a tiny Box env and fail with
the missing name and a request to revisit the pin.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3 as sb3
import torch
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.save_util import recursive_getattr

from agents.buffers import EpisodeRewardBuffer
from agents.ddpg import ALGOS
from agents.noise import TruncatedNormalNoise

LAYERS = 3


def _missing(what: str, name: str) -> str:
    return (f"stable-baselines3 {sb3.__version__}: {what} has no {name!r}, an SB3 internal that amc relies on "
            "(agents/resume.py, agents/ddpg.py, agents/buffers.py or agents/callbacks.py); this SB3 version "
            "changed it: adapt amc and revisit the stable-baselines3 pin in pyproject.toml")


def need(obj: Any, name: str, what: str) -> Any:
    if not hasattr(obj, name):
        pytest.fail(_missing(what, name), pytrace=False)
    return getattr(obj, name)


class TinyEnv(gym.Env):
    """Three steps per episode, like a net of three layers; reports the applied action as the real env does."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        return np.full(4, self.t / LAYERS, dtype=np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        done = self.t == LAYERS
        return self._obs(), float(np.sum(action)) if done else 0.0, done, False, {"applied_action": np.asarray(action)}


class Recorder(BaseCallback):
    """Records what agents.callbacks.SearchCallback reads from SB3 at each step."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: set[str] = set()

    def _on_step(self) -> bool:
        self.keys |= set(self.locals)
        return True


def make(algo: str) -> Any:
    """An agent as agents.search.make_agent builds it, with tiny networks."""
    kwargs: dict[str, Any] = dict(
        policy="MlpPolicy", env=TinyEnv(), actor_lr=1e-4, critic_lr=1e-3, buffer_size=10 * LAYERS,
        learning_starts=LAYERS, batch_size=4, tau=0.01, gamma=1.0, train_freq=(1, "episode"), gradient_steps=-1,
        replay_buffer_class=EpisodeRewardBuffer, replay_buffer_kwargs={"baseline_rate": 0.5},
        policy_kwargs={"net_arch": [8, 8]}, seed=0, device="cpu", verbose=0)
    if algo in ("ddpg", "td3"):
        kwargs["action_noise"] = TruncatedNormalNoise(0.5, 0.95, 1, -1.0, 1.0, seed=0)
    agent = ALGOS[algo](**kwargs)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    return agent


@pytest.mark.parametrize("base", [DDPG, TD3, SAC, OffPolicyAlgorithm], ids=lambda c: c.__name__)
def test_the_private_hooks_amc_uses_exist(base: type) -> None:
    # agents/ddpg.py overrides _setup_model and _update_learning_rate (and _sample_action for
    # DDPG/TD3); agents/resume.py calls _get_torch_save_params; a renamed hook would leave an
    # override that is never called
    for name in ("_setup_model", "_update_learning_rate", "_get_torch_save_params", "_sample_action",
                 "_setup_learn"):
        need(base, name, f"{base.__name__}")


def test_the_replay_buffer_internals_exist() -> None:
    # agents/buffers.py subclasses ReplayBuffer and saves/restores its arrays and write position
    for name in ("add", "sample"):
        need(ReplayBuffer, name, "ReplayBuffer")
    space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
    buf = ReplayBuffer(8, space, space, device="cpu")
    for name in EpisodeRewardBuffer._ARRAYS + ("pos", "full", "buffer_size", "action_space"):
        need(buf, name, "ReplayBuffer()")
    for name in EpisodeRewardBuffer._ARRAYS:
        assert isinstance(getattr(buf, name), np.ndarray), _missing("ReplayBuffer()", f"{name} as a numpy array")


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_the_agent_internals_resume_uses_exist(algo: str) -> None:
    agent = make(algo)
    recorder = Recorder()
    agent.learn(total_timesteps=3 * LAYERS, callback=recorder)
    what = f"{algo.upper()} after learn()"

    # agents/resume.py: agent_state / load_agent_state
    names, variables = need(agent, "_get_torch_save_params", what)()
    for n in names:
        try:
            obj = recursive_getattr(agent, n)
        except AttributeError:
            pytest.fail(_missing(what, n), pytrace=False)
        assert hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict"), _missing(what, f"{n}.state_dict")
    for n in variables:
        try:
            obj = recursive_getattr(agent, n)
        except AttributeError:
            pytest.fail(_missing(what, n), pytrace=False)
        assert isinstance(obj, torch.Tensor), _missing(what, f"{n} as a tensor")
    for name, kind in (("_episode_num", int), ("_n_updates", int), ("num_timesteps", int),
                       ("_last_obs", np.ndarray), ("_last_episode_starts", np.ndarray)):
        assert isinstance(need(agent, name, what), kind), _missing(what, f"{name} as {kind.__name__}")
    assert (agent._episode_num, agent.num_timesteps) == (3, 3 * LAYERS), \
        _missing(what, "_episode_num counting episodes")
    assert agent._n_updates > 0, _missing(what, "_n_updates counting updates")
    assert isinstance(need(agent, "replay_buffer", what), EpisodeRewardBuffer)
    need(agent, "action_noise", what)
    need(agent, "action_space", what)

    # agents/ddpg.py: the actor's optimizer (split learning rates), the action scaling
    need(need(agent, "actor", what), "optimizer", f"{what}.actor")
    for name in ("scale_action", "unscale_action"):
        need(agent.policy, name, f"{what}.policy")

    # agents/callbacks.py: the rollout's locals, the logger's values
    for key in ("dones", "infos"):
        assert key in recorder.keys, _missing("the callback's locals", key)
    need(agent.logger, "name_to_value", "the agent's logger")

    # resuming: learn(reset_num_timesteps=False) keeps the restored observation and counters
    counters = (agent._episode_num, agent.num_timesteps)
    sentinel = np.full_like(agent._last_obs, 0.5)
    agent._last_obs = sentinel
    agent.learn(total_timesteps=0, reset_num_timesteps=False)
    assert agent._last_obs is sentinel, _missing(what, "_last_obs kept by learn(reset_num_timesteps=False)")
    assert (agent._episode_num, agent.num_timesteps) == counters, \
        _missing(what, "_episode_num kept by learn(reset_num_timesteps=False)")

"""AMC's additions to SB3: truncated-normal noise, final-reward buffer, split learning rates, schedule."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from agents.buffers import EpisodeRewardBuffer
from agents.ddpg import AmcDDPG, AmcSAC, AmcTD3
from agents.noise import TruncatedNormalNoise
from agents.search import SearchConfig, make_agent
from amc.errors import AmcError
from amc.pruner import ChannelPruner
from envs.channel_pruning import ChannelPruningEnv


@pytest.fixture(scope="module")
def env_parts() -> tuple[ChannelPruner, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 10)).eval()
    x, y = torch.randn(64, 1, 12, 12), torch.randint(0, 10, (64,))
    return ChannelPruner(model, (1, 12, 12), [x[:32]]), (x, y)


def tiny_env(env_parts) -> ChannelPruningEnv:
    pruner, reward_set = env_parts
    return ChannelPruningEnv(pruner, reward_set, target=0.5)


# ------------------------------------------------------------------ noise (paper §3.4)

@pytest.mark.parametrize("mu", [-1.0, -0.3, 0.0, 0.99, 1.0])
@pytest.mark.parametrize("sigma", [0.01, 0.5, 1.25, 10.0])
def test_truncated_normal_stays_in_bounds(mu, sigma):
    noise = TruncatedNormalNoise(sigma, warmup=0, low=-1.0, high=1.0, seed=0)
    x = np.concatenate([noise.sample(np.full(1, mu)) for _ in range(400)])
    assert x.dtype == np.float32 and x.min() >= -1.0 and x.max() <= 1.0
    if sigma <= 0.5:  # not piled on the bounds as clipping would do
        assert np.mean(np.abs(x) == 1.0) < 0.05


def test_truncated_normal_matches_the_truncated_distribution():
    noise = TruncatedNormalNoise(0.5, low=0.0, high=1.0, seed=1)
    x = np.concatenate([noise.sample(np.zeros(50)) for _ in range(200)])
    # half-normal on [0, 1] with sigma 0.5: mean = sigma * (phi(0) - phi(2)) / (Phi(2) - 1/2)
    phi = lambda z: np.exp(-z * z / 2) / np.sqrt(2 * np.pi)  # noqa: E731
    expected = 0.5 * (phi(0) - phi(2)) / (0.97725 - 0.5)
    assert x.mean() == pytest.approx(expected, abs=0.01)
    assert noise.sample(np.array([0.3, 0.7])).shape == (2,)


def test_sigma_decays_per_episode_after_warmup():
    noise = TruncatedNormalNoise(0.5, decay=0.95, warmup=3)
    sigmas = []
    for episode in range(8):
        noise.episode = episode  # the agent's episode index
        noise.reset()  # SB3's calls change nothing
        sigmas.append(noise.sigma)
    assert sigmas[:4] == [0.5] * 4
    assert sigmas[4:] == pytest.approx([0.5 * 0.95 ** k for k in range(1, 5)])
    zero = TruncatedNormalNoise(0.0, seed=0)
    assert zero.sample(np.array([0.25]))[0] == pytest.approx(0.25)


def test_noise_is_seeded_and_refuses_plain_call():
    a = TruncatedNormalNoise(0.5, seed=4).sample(np.zeros(5))
    b = TruncatedNormalNoise(0.5, seed=4).sample(np.zeros(5))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="sample"):
        TruncatedNormalNoise(0.5)()
    with pytest.raises(ValueError):
        TruncatedNormalNoise(-1.0)


# ------------------------------------------------------------------ episode buffer

def make_buffer(capacity: int, rate: float = 0.5) -> EpisodeRewardBuffer:
    return EpisodeRewardBuffer(capacity, spaces.Box(0, 1, (11,), np.float32), spaces.Box(0, 1, (1,), np.float32),
                               device="cpu", baseline_rate=rate)


def add_episode(buf: EpisodeRewardBuffer, final: float, layers: int = 3, applied: float = 0.25) -> None:
    for t in range(layers):
        done = t == layers - 1
        info = {"applied_action": applied}
        buf.add(np.full((1, 11), t / 10, np.float32), np.full((1, 11), (t + 1) / 10, np.float32),
                np.array([[0.9]], np.float32), np.array([final if done else 0.0], np.float32),
                np.array([done]), [info])


def test_every_transition_gets_the_final_reward_and_the_applied_action():
    buf = make_buffer(10)
    for t in range(2):  # nothing lands before the episode ends
        buf.add(np.zeros((1, 11), np.float32), np.zeros((1, 11), np.float32), np.array([[0.9]], np.float32),
                np.array([0.0], np.float32), np.array([False]), [{"applied_action": 0.25}])
    assert buf.size() == 0
    buf.add(np.zeros((1, 11), np.float32), np.zeros((1, 11), np.float32), np.array([[0.9]], np.float32),
            np.array([-0.3], np.float32), np.array([True]), [{"applied_action": 0.25}])
    assert buf.size() == 3
    np.testing.assert_allclose(buf.rewards[:3, 0], -0.3)
    np.testing.assert_allclose(buf.dones[:3, 0], [0, 0, 1])
    # applied action 0.25 on the env's [0, 1] is stored on SB3's [-1, 1] scale: -0.5, not the actor's 0.9
    np.testing.assert_allclose(buf.actions[:3, 0, 0], -0.5)


def test_moving_baseline_is_subtracted_at_sampling():
    buf = make_buffer(3)
    add_episode(buf, -0.2)
    first = buf.sample(4)
    assert buf.baseline == pytest.approx(-0.2)  # starts at the first batch's mean
    np.testing.assert_allclose(first.rewards.numpy(), 0.0, atol=1e-7)
    add_episode(buf, -0.6)  # overwrites the whole buffer
    second = buf.sample(4)
    assert buf.baseline == pytest.approx(-0.2 + 0.5 * (-0.6 + 0.2))  # b <- b + 0.5 (mean - b)
    np.testing.assert_allclose(second.rewards.numpy(), -0.6 - buf.baseline, atol=1e-6)
    raw = make_buffer(3, rate=0.0)
    add_episode(raw, -0.6)
    np.testing.assert_allclose(raw.sample(4).rewards.numpy(), -0.6, atol=1e-7)


# ------------------------------------------------------------------ learners

@pytest.mark.parametrize("algo,cls", [("ddpg", AmcDDPG), ("td3", AmcTD3), ("sac", AmcSAC)])
def test_split_learning_rates(env_parts, algo, cls):
    agent = make_agent(SearchConfig(algo=algo, episodes=4, warmup=2), tiny_env(env_parts))
    assert isinstance(agent, cls)
    assert agent.actor.optimizer.param_groups[0]["lr"] == 1e-4
    assert agent.critic.optimizer.param_groups[0]["lr"] == 1e-3
    agent.learn(4 * 3)  # SB3 resets learning rates at every update; ours stay split
    assert agent.actor.optimizer.param_groups[0]["lr"] == 1e-4
    assert agent.critic.optimizer.param_groups[0]["lr"] == 1e-3


def test_ddpg_has_amc_settings(env_parts):
    agent = make_agent(SearchConfig(episodes=4, warmup=2), tiny_env(env_parts))
    assert (agent.tau, agent.gamma, agent.batch_size) == (0.01, 1.0, 64)
    assert agent.buffer_size == 100 * 3 and agent.learning_starts == 2 * 3
    assert isinstance(agent.replay_buffer, EpisodeRewardBuffer)
    hidden = [m.out_features for m in agent.actor.mu if isinstance(m, nn.Linear)]
    assert hidden == [300, 300, 1]
    assert len(agent.critic.q_networks) == 1  # DDPG: one critic
    # sigma 0.5 in preserve-ratio units = 0.5 * 2 / (1 - 0.2) on SB3's [-1, 1] action scale
    assert agent.action_noise.sigma0 == pytest.approx(1.25)


def test_warmup_then_one_update_per_transition(env_parts):
    agent = make_agent(SearchConfig(episodes=5, warmup=2), tiny_env(env_parts))
    agent.learn(5 * 3)
    # no update during the 2 warm-up episodes, then 3 layers' worth after each of the 3 others
    assert agent._n_updates == 3 * 3
    assert agent.action_noise.episode == 4  # the last episode sampled with sigma_0 * 0.95 ** (4 - 2)
    assert agent.action_noise.sigma == pytest.approx(1.25 * 0.95 ** 2)


def test_exploration_samples_around_the_actor(env_parts):
    agent = make_agent(SearchConfig(episodes=4, warmup=1, sigma=0.0), tiny_env(env_parts))
    agent.learn(1 * 3)
    agent._last_obs = agent.env.reset()
    mu, _ = agent.predict(agent._last_obs, deterministic=True)
    action, buffer_action = agent._sample_action(learning_starts=0, action_noise=agent.action_noise)
    np.testing.assert_allclose(action, mu, atol=1e-6)  # sigma 0: the actor's own choice
    agent.action_noise.sigma0 = 1.0
    actions = [float(agent._sample_action(0, agent.action_noise)[0][0, 0]) for _ in range(50)]
    assert all(0.0 <= a <= 1.0 for a in actions) and len(set(actions)) > 40


def test_config_validation():
    SearchConfig(episodes=4, warmup=2).validate()
    SearchConfig(algo="random", episodes=4, warmup=100).validate()  # warm-up means nothing to it
    for kwargs, message in [({"target": float("nan")}, "--target-flops must be in (0, 1], got nan"),
                            ({"target": 0.0}, "--target-flops must be in (0, 1], got 0.0"),
                            ({"episodes": 5, "warmup": 5}, "--episodes (5) must be greater than --warmup (5)"),
                            ({"algo": "ppo"}, "unknown algo 'ppo'"),
                            ({"lbound": 1.5}, "--lbound must be in (0, 1], got 1.5")]:
        with pytest.raises(AmcError) as e:
            SearchConfig(**{"episodes": 10, "warmup": 2, **kwargs}).validate()
        assert str(e.value).startswith(message)

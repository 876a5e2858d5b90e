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
from amc.spec import PruneSpec
from helpers import exactly
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
    # sigma 0 turns the noise off even with the search's default floor
    agent = make_agent(SearchConfig(episodes=4, warmup=1, sigma=0.0), tiny_env(env_parts))
    assert agent.action_noise.sigma_min > 0 and agent.action_noise.sigma == 0.0
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
    for kwargs, message in [({"episodes": 5, "warmup": 5}, "--episodes (5) must be greater than --warmup (5)"),
                            ({"algo": "ppo"}, "unknown algo 'ppo'")]:
        with pytest.raises(AmcError) as e:
            SearchConfig(**{"episodes": 10, "warmup": 2, **kwargs}).validate()
        assert str(e.value).startswith(message)
    for kwargs, message in [({"target": float("nan")}, "--target-flops must be in (0, 1], got nan"),
                            ({"target": 0.0}, "--target-flops must be in (0, 1], got 0.0"),
                            ({"lbound": 1.5}, "--lbound must be in (0, 1], got 1.5")]:
        with pytest.raises(AmcError, match=exactly(message)):
            PruneSpec(**kwargs).validate()


def test_names_of_rewards_and_algos_match_their_implementations():
    """agents.config lists them without importing SB3 or gymnasium (the CLI builds its options
    from them), so a test keeps them equal to the real tables."""
    from agents.config import ALGO_NAMES, REWARD_NAMES
    from agents.ddpg import ALGOS
    from envs.rewards import REWARDS

    assert REWARD_NAMES == tuple(REWARDS) and ALGO_NAMES == (*ALGOS, "random")


# ------------------------------------------------------------------ departures from the official code
# Each option of docs/method.md's departures table, exercised; defaults are checked by the tests above.

from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402

from agents.callbacks import SearchCallback  # noqa: E402
from agents.ddpg import warmup_steps  # noqa: E402
from agents.noise import auto_decay  # noqa: E402


def build_agent(env: ChannelPruningEnv, cls=AmcDDPG, warmup: int = 1, noise: TruncatedNormalNoise | None = None,
                learning_starts: int | None = None, buffer_kwargs: dict | None = None, **kwargs):
    """An agent as make_agent builds it, with small networks and the options passed straight in."""
    layers = env.num_layers
    if cls is not AmcSAC:
        kwargs["action_noise"] = noise or TruncatedNormalNoise(1.25, 0.95, warmup, seed=0)
    return cls(policy="MlpPolicy", env=env, buffer_size=100 * layers,
               learning_starts=warmup * layers if learning_starts is None else learning_starts,
               batch_size=8, tau=0.01, gamma=1.0, train_freq=(1, "episode"), gradient_steps=-1,
               replay_buffer_class=EpisodeRewardBuffer, replay_buffer_kwargs=buffer_kwargs or {},
               policy_kwargs={"net_arch": [16, 16]}, seed=0, device="cpu", verbose=0, **kwargs)


class Recorder(BaseCallback):
    """What SB3 passes to the buffer at every step: its buffer action and the env's info."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer_actions: list[float] = []
        self.applied: list[float] = []

    def _on_step(self) -> bool:
        self.buffer_actions.append(float(self.locals["buffer_actions"][0, 0]))
        self.applied.append(float(self.locals["infos"][0]["applied_action"]))
        return True


# (a) action mapping

def test_clip_action_map_is_the_official_one(env_parts):
    pruner, reward_set = env_parts
    # target 1.0 without the lower wall: no budget moves an action (with it, 1.0 keeps everything)
    clip = ChannelPruningEnv(pruner, reward_set, target=1.0, lbound=0.2, fill_budget=False, action_map="clip")
    linear = ChannelPruningEnv(pruner, reward_set, target=1.0, lbound=0.2, fill_budget=False)
    assert linear.action_map == "linear"
    # clip: the action is the ratio, and everything below lbound is raised to it
    ratios = [clip.preserve_ratio(a) for a in (0.0, 0.1, 0.2, 0.5, 0.7, 1.0)]
    assert ratios == pytest.approx([0.2, 0.2, 0.2, 0.5, 0.7, 1.0])
    assert [clip.action_of(r) for r in (0.125, 0.5, 1.0)] == pytest.approx([0.125, 0.5, 1.0])
    # linear: [0, 1] onto [lbound, 1]
    assert [linear.preserve_ratio(a) for a in (0.0, 0.5, 1.0)] == pytest.approx([0.2, 0.6, 1.0])
    assert linear.action_of(0.6) == pytest.approx(0.5)
    # a step keeps whole channels (8 here): the clip map keeps 4 of 8 for action 0.5, and its
    # actions at and below lbound all keep lbound's 2 of 8, as the linear map's action 0 does
    for env, action, kept in ((clip, 0.5, 0.5), (clip, 0.05, 0.25), (clip, 0.2, 0.25), (linear, 0.0, 0.25)):
        env.reset(seed=0)
        _, _, _, _, info = env.step(np.array([action], np.float32))
        assert info["preserve_ratio"] == pytest.approx(kept)
        assert info["applied_action"] == pytest.approx(env.action_of(kept))
    with pytest.raises(AmcError, match="action_map must be linear or clip"):
        ChannelPruningEnv(pruner, reward_set, action_map="sigmoid")


def test_clip_action_map_in_a_search(env_parts):
    """Warm-up actions uniform on [0, 1], as the official random_action: with the clip map
    about lbound of them land on lbound itself."""
    pruner, reward_set = env_parts
    env = ChannelPruningEnv(pruner, reward_set, target=1.0, lbound=0.5, fill_budget=False, action_map="clip")
    rec = Recorder()
    build_agent(env, warmup=20).learn(20 * env.num_layers, callback=rec)
    at_lbound = np.mean([r <= 0.5 + 1e-6 for r in env.applied] + [a <= 0.5 + 1e-6 for a in rec.applied])
    assert 0.3 < at_lbound < 0.7


# (b) stored action

def test_buffer_stores_the_agents_action_when_asked():
    buf = EpisodeRewardBuffer(10, spaces.Box(0, 1, (11,), np.float32), spaces.Box(0, 1, (1,), np.float32),
                              device="cpu", stored_action="agent")
    add_episode(buf, -0.3, applied=0.25)
    np.testing.assert_allclose(buf.actions[:3, 0, 0], 0.9)  # the agent's 0.9, not the applied 0.25 (-0.5)
    assert make_buffer(10).stored_action == "applied"
    with pytest.raises(ValueError, match="stored_action must be one of applied, agent"):
        EpisodeRewardBuffer(10, spaces.Box(0, 1, (11,), np.float32), spaces.Box(0, 1, (1,), np.float32),
                            stored_action="raw")


@pytest.mark.parametrize("stored", ["agent", "applied"])
def test_stored_actions_in_a_search(env_parts, stored):
    env = tiny_env(env_parts)  # 50% FLOPs: the wall and the rounding change most actions
    rec = Recorder()
    agent = build_agent(env, warmup=1, buffer_kwargs={"stored_action": stored})
    agent.learn(3 * env.num_layers, callback=rec)  # one warm-up episode, two sampled around the actor
    stored_actions = agent.replay_buffer.actions[:9, 0, 0]
    sampled = np.array(rec.buffer_actions, np.float32)  # SB3's buffer action: the agent's, on [-1, 1]
    applied = 2.0 * np.array(rec.applied, np.float32) - 1.0
    assert not np.allclose(sampled, applied, atol=1e-3)
    np.testing.assert_allclose(stored_actions, sampled if stored == "agent" else applied, atol=1e-6)


# (c) last-layer initialisation

@pytest.mark.parametrize("cls", [AmcDDPG, AmcTD3, AmcSAC])
def test_uniform_last_layer_init(env_parts, cls):
    agent = build_agent(tiny_env(env_parts), cls=cls, last_layer_init="uniform")
    layers = agent.output_layers()
    assert len(layers) == (2 if cls is AmcSAC else 1) + len(agent.critic.q_networks)  # SAC: mean and log-std heads
    for layer in layers:
        for p in (layer.weight, layer.bias):
            assert p.abs().max().item() <= 3e-3 and p.abs().max().item() > 1e-4
    assert layers[0] is [m for m in agent.actor.modules() if isinstance(m, nn.Linear)][-1 if cls is not AmcSAC else -2]
    for net, target in (("actor", "actor_target"), ("critic", "critic_target")):
        if hasattr(agent, target):  # the targets start equal to the new networks
            for a, b in zip(getattr(agent, net).parameters(), getattr(agent, target).parameters()):
                assert torch.equal(a, b)
    # the hidden layers keep PyTorch's init, and the default leaves the output layers to it too
    first = [m for m in agent.actor.modules() if isinstance(m, nn.Linear)][0]
    assert first.weight.abs().max().item() > 3e-3
    default = build_agent(tiny_env(env_parts), cls=cls)
    assert default.last_layer_init == "default"
    assert max(layer.weight.abs().max().item() for layer in default.output_layers()) > 3e-3
    with pytest.raises(ValueError, match="last_layer_init must be one of default, uniform"):
        build_agent(tiny_env(env_parts), cls=cls, last_layer_init="official")


# (d) warm-up count

def test_warmup_conventions(env_parts):
    assert warmup_steps(100, 7) == 700 and warmup_steps(100, 7, "ours") == 700
    assert warmup_steps(100, 7, "official") == 707  # episodes 0..100 random, as `episode <= warmup`
    with pytest.raises(ValueError, match="warmup convention"):
        warmup_steps(100, 7, "paper")
    env = tiny_env(env_parts)
    noise = TruncatedNormalNoise(1.25, 0.95, warmup=2, seed=0)
    agent = build_agent(env, noise=noise, learning_starts=warmup_steps(2, env.num_layers, "official"))
    rec = Recorder()
    agent.learn(5 * env.num_layers, callback=rec)
    # 3 random episodes (0, 1, 2), then 2 played by the actor with updates after each
    assert agent._n_updates == 2 * 3
    assert noise.episode == 4 and noise.sigma == pytest.approx(1.25 * 0.95 ** 2)  # same sigma per index


# ------------------------------------------------------------------ exploration that lasts

def test_sigma_floor_holds_after_many_episodes():
    noise = TruncatedNormalNoise(1.0, decay=0.95, warmup=10, sigma_min=0.2)
    sigmas = [noise.sigma_at(e) for e in range(2000)]
    assert sigmas[:11] == [1.0] * 11
    assert sigmas[11] == pytest.approx(0.95)
    assert min(sigmas) == pytest.approx(0.2) and sigmas[-1] == pytest.approx(0.2)
    noise.episode = 1500
    assert noise.sigma == pytest.approx(0.2)
    x = np.concatenate([noise.sample(np.zeros(1)) for _ in range(300)])
    assert x.std() > 0.1  # still exploring
    assert TruncatedNormalNoise(1.0, 0.95, warmup=10).sigma_at(1000) < 1e-20  # no floor: today's schedule
    assert TruncatedNormalNoise(0.1, 0.95, warmup=0, sigma_min=0.2).sigma_at(500) == 0.1  # floor capped at sigma_0
    assert TruncatedNormalNoise(0.0, 0.95, warmup=0, sigma_min=0.2).sigma_at(500) == 0.0
    with pytest.raises(ValueError, match="sigma_min"):
        TruncatedNormalNoise(1.0, sigma_min=-0.1)


@pytest.mark.parametrize("warmup,episodes", [(100, 400), (2, 5), (0, 50)])
def test_auto_decay_reaches_the_final_sigma_at_the_last_episode(warmup, episodes):
    noise = TruncatedNormalNoise(1.25, "auto", warmup=warmup, sigma_final=0.125, episodes=episodes)
    assert noise.decay == pytest.approx(0.1 ** (1 / (episodes - 1 - warmup)))
    assert noise.sigma_at(warmup) == pytest.approx(1.25)
    assert noise.sigma_at(episodes - 1) == pytest.approx(0.125)
    sigmas = [noise.sigma_at(e) for e in range(episodes)]
    assert all(a >= b for a, b in zip(sigmas, sigmas[1:]))
    # the floor as the final sigma: reached at the last episode, never passed
    floor = TruncatedNormalNoise(1.25, "auto", warmup=warmup, sigma_min=0.25, episodes=episodes)
    assert floor.sigma_at(episodes - 1) == pytest.approx(0.25) and floor.sigma_at(10 * episodes) == pytest.approx(0.25)


def test_auto_decay_edge_cases_and_errors():
    assert auto_decay(1.0, 0.5, warmup=10, episodes=11) == 1.0  # one learning episode: nothing to decay
    assert auto_decay(0.5, 1.0, warmup=0, episodes=10) == 1.0  # final above the start: constant
    with pytest.raises(ValueError, match="needs the number of episodes"):
        TruncatedNormalNoise(1.0, "auto", sigma_final=0.1)
    with pytest.raises(ValueError, match="final sigma > 0"):
        TruncatedNormalNoise(1.0, "auto", episodes=10)  # no final sigma and no floor
    with pytest.raises(ValueError, match="sigma_final only applies"):
        TruncatedNormalNoise(1.0, 0.95, sigma_final=0.1)
    with pytest.raises(ValueError, match="decay must be a number in"):
        TruncatedNormalNoise(1.0, "slow")


def test_noise_state_round_trip_checks_the_schedule():
    a = TruncatedNormalNoise(1.25, "auto", warmup=2, sigma_min=0.1, sigma_final=0.2, episodes=20, seed=3)
    a.episode = 7
    a.sample(np.zeros(4))
    state = a.state_dict()
    b = TruncatedNormalNoise(1.25, "auto", warmup=2, sigma_min=0.1, sigma_final=0.2, episodes=20, seed=99)
    b.load_state_dict(state)
    assert b.episode == 7
    np.testing.assert_array_equal(a.sample(np.zeros(4)), b.sample(np.zeros(4)))
    with pytest.raises(ValueError, match="exploration schedule"):
        TruncatedNormalNoise(1.25, 0.95, warmup=2, sigma_min=0.1).load_state_dict(state)
    old = {k: v for k, v in state.items() if k != "schedule"}  # a state saved before schedules were recorded
    TruncatedNormalNoise(1.25, 0.95, warmup=2).load_state_dict(old)
    torch.save(state, __import__("io").BytesIO())  # plain values only (resume reads with weights_only)


def test_callback_logs_sigma_of_learning_episodes(env_parts):
    class FakeLog:
        def __init__(self) -> None:
            self.episodes, self.scalars = 0, []
            self.writer = self

        def add_scalar(self, tag, value, step) -> None:
            self.scalars.append((tag, step, value))

        def on_episode(self, info) -> None:
            self.episodes += 1

        def log_losses(self, losses, episode) -> None:
            pass

    env = tiny_env(env_parts)
    noise = TruncatedNormalNoise(1.25, 0.3, warmup=2, sigma_min=0.25, seed=0)
    log = FakeLog()
    build_agent(env, warmup=2, noise=noise).learn(5 * env.num_layers, callback=SearchCallback(log, sigma_scale=2.5))
    assert [(t, e) for t, e, _ in log.scalars] == [("explore/sigma", 2), ("explore/sigma", 3), ("explore/sigma", 4)]
    assert [v for *_, v in log.scalars] == pytest.approx([0.5, 0.15, 0.1])  # 1.25, 0.375, floor 0.25
    quiet = FakeLog()
    build_agent(env, warmup=2).learn(3 * env.num_layers, callback=SearchCallback(quiet))
    assert quiet.scalars == [] and quiet.episodes == 3


def test_noise_scale_follows_the_action_map():
    from agents.noise import noise_scale

    assert noise_scale(0.2) == pytest.approx(2.5) and noise_scale(0.2, "linear") == pytest.approx(2.5)
    assert noise_scale(1.0) == 0.0
    assert noise_scale(0.2, "clip") == 2.0
    with pytest.raises(ValueError, match="action_map"):
        noise_scale(0.2, "tanh")

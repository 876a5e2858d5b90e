"""The pruning MDP: Gymnasium/SB3 conformance, episode shape, the wall, rewards, determinism, cost."""
from __future__ import annotations

import math
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from torch import nn

import envs
from amc.errors import AmcError
from amc.pruner import ChannelPruner
from amc.train import evaluate
from envs.channel_pruning import ChannelPruningEnv
from envs.rewards import REWARDS, get_reward
from helpers import exactly

INPUT = (1, 12, 12)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


@pytest.fixture(scope="module")
def reward_set() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, *INPUT, generator=g), torch.randint(0, 10, (64,), generator=g)


@pytest.fixture(scope="module")
def pruner(reward_set) -> ChannelPruner:
    return ChannelPruner(tiny_model(), INPUT, [reward_set[0][:32]])


def make_env(pruner, reward_set, **kw) -> ChannelPruningEnv:
    return ChannelPruningEnv(pruner, reward_set, **kw)


def rollout(env: ChannelPruningEnv, actions, seed: int | None = 0) -> list[tuple]:
    obs, _ = env.reset(seed=seed)
    out = [(obs.copy(),)]
    for a in actions:
        obs, r, term, trunc, info = env.step(np.array([a], dtype=np.float32))
        out.append((obs.copy(), r, term, trunc, info))
        if term:
            break
    return out


def test_passes_gymnasium_env_checker(pruner, reward_set):
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gymnasium.make(envs.ENV_ID, pruner=pruner, reward_set=reward_set).unwrapped)


def test_passes_sb3_env_checker(pruner, reward_set):
    from stable_baselines3.common.env_checker import check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(make_env(pruner, reward_set), warn=True)
    # the one advice left: SB3 prefers [-1, 1] actions; ours is a preserve share in [0, 1] by design
    assert all("symmetric and normalized Box action space" in str(w.message) for w in caught), \
        [str(w.message) for w in caught]


def test_registered_and_made_from_prebuilt_objects(pruner, reward_set):
    env = gymnasium.make(envs.ENV_ID, pruner=pruner, reward_set=reward_set, target=0.5)
    assert env.spec.id == "amc/ChannelPruning-v0"
    assert isinstance(env.unwrapped, ChannelPruningEnv)
    assert env.observation_space == gymnasium.spaces.Box(0, 1, (11,), np.float32)
    assert env.action_space == gymnasium.spaces.Box(0, 1, (1,), np.float32)


def test_made_from_strings(tiny_data_dir):
    from helpers import exactly, TINY_NET

    env = gymnasium.make(envs.ENV_ID, model=f"{TINY_NET}:factory", weights=None, dataset="fashion-mnist",
                         data_dir=str(tiny_data_dir), reward_set_size=100, calib_batches=1, calib_batch_size=10,
                         target=0.5)
    steps = rollout(env.unwrapped, [1.0] * 10)
    assert len(steps) - 1 == env.unwrapped.num_layers
    assert steps[-1][4]["flops_ratio"] <= 0.5


def test_episode_is_one_step_per_layer_reward_at_the_end(pruner, reward_set):
    env = make_env(pruner, reward_set, target=0.5)
    steps = rollout(env, [0.7, 0.3, 0.9, 0.5])[1:]
    assert len(steps) == pruner.num_layers == 3
    for obs, r, term, trunc, info in steps[:-1]:
        assert r == 0.0 and not term and not trunc
        assert obs.dtype == np.float32 and obs.shape == (11,) and env.observation_space.contains(obs)
    obs, r, term, trunc, info = steps[-1]
    assert term and not trunc
    for key in ("flops_ratio", "params_ratio", "reward_top1", "ratios", "counts", "reward"):
        assert key in info
    assert r == info["reward"] == pytest.approx(-(1 - info["reward_top1"] / 100))
    assert info["ratios"] == [s[4]["preserve_ratio"] for s in steps]
    assert info["flops_ratio"] <= 0.5
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0.5], dtype=np.float32))


def test_action_maps_onto_lbound_one_and_applied_ratio_is_observed(pruner, reward_set):
    env = make_env(pruner, reward_set, target=None, lbound=0.25)
    steps = rollout(env, [0.0, 1.0, 0.5])[1:]
    assert steps[0][4]["preserve_ratio"] == pytest.approx(2 / 8)  # 0 -> lbound 0.25 of 8 channels
    assert steps[1][4]["preserve_ratio"] == 1.0
    assert steps[2][4]["preserve_ratio"] == pytest.approx(10 / 16)  # 0.25 + 0.75 * 0.5 = 0.625
    # a_{t-1} (last feature) is the ratio actually applied; applied_action maps it back into [0, 1]
    assert steps[0][0][-1] == pytest.approx(0.25) and steps[1][0][-1] == pytest.approx(1.0)
    assert steps[0][4]["applied_action"] == pytest.approx(0.0)


def test_wall_keeps_budget_for_greedy_actions(pruner, reward_set):
    for target in (0.3, 0.5, 0.8):
        env = make_env(pruner, reward_set, target=target)
        info = rollout(env, [1.0] * 3)[-1][4]
        assert info["flops"] <= target * pruner.flops.full
    env = make_env(pruner, reward_set, target=0.5, budget="params")
    info = rollout(env, [1.0] * 3)[-1][4]
    assert info["params"] <= 0.5 * pruner.params.full


def test_unreachable_budget_is_an_error(pruner, reward_set):
    with pytest.raises(AmcError, match="unreachable"):
        make_env(pruner, reward_set, target=0.001)


def test_accuracy_guaranteed_rewards_have_no_wall(pruner, reward_set):
    env = make_env(pruner, reward_set, reward="flops", target=0.3)
    info = rollout(env, [1.0] * 3)[-1][4]
    assert info["flops_ratio"] == 1.0  # no wall, whatever the target
    assert info["reward"] == pytest.approx(-info["error"] * math.log(pruner.flops.full))
    env = make_env(pruner, reward_set, reward="params")
    info = rollout(env, [0.0] * 3)[-1][4]
    assert info["reward"] == pytest.approx(-info["error"] * math.log(info["params"]))


def test_reward_formulas():
    assert get_reward("acc")(0.25, 10**6, 10**4) == -0.25
    assert get_reward("flops")(0.25, 10**6, 10**4) == pytest.approx(-0.25 * math.log(10**6))
    assert get_reward("params")(0.25, 10**6, 10**4) == pytest.approx(-0.25 * math.log(10**4))
    assert get_reward("latency")(0.25, 10**6, 10**4, latency_us=2000.0) == pytest.approx(-0.25 * math.log(2000))
    with pytest.raises(AmcError, match=exactly("the latency reward needs the model's latency")):
        get_reward("latency")(0.25, 10**6, 10**4)
    assert [n for n, r in REWARDS.items() if r.wall] == ["acc"]
    with pytest.raises(AmcError, match="unknown reward 'joules'"):
        get_reward("joules")


def test_seeded_rollout_is_deterministic(pruner, reward_set):
    actions = np.random.default_rng(3).random(3)
    a = rollout(make_env(pruner, reward_set), actions, seed=7)
    b = rollout(make_env(pruner, reward_set), actions, seed=7)
    for sa, sb in zip(a, b):
        np.testing.assert_array_equal(sa[0], sb[0])
        assert sa[1:] == sb[1:]
    first, _ = make_env(pruner, reward_set).reset(seed=1)
    np.testing.assert_array_equal(first, a[0][0])  # the first observation does not depend on anything


def test_reward_accuracy_matches_engine_evaluation(pruner, reward_set):
    from amc.data import ImageSet

    env = make_env(pruner, reward_set, eval_batch_size=7)  # batches that do not divide the set
    info = rollout(env, [0.4, 0.6, 0.2])[-1][4]
    slim = pruner.prune(info["counts"])
    x, y = reward_set
    images = ImageSet(torch.zeros(len(y), *INPUT, dtype=torch.uint8), y, [0.0], [1.0])
    images._cache = x
    assert info["reward_top1"] == evaluate(slim, images)


def test_episode_does_one_prune_and_one_evaluation(pruner, reward_set, monkeypatch):
    env = make_env(pruner, reward_set)
    calls = {"prune": 0, "eval": 0}
    real_prune, real_eval = pruner.prune, env.reward_top1

    def prune(*a, **k):
        calls["prune"] += 1
        return real_prune(*a, **k)

    def reward_top1(*a, **k):
        calls["eval"] += 1
        return real_eval(*a, **k)

    monkeypatch.setattr(pruner, "prune", prune)
    monkeypatch.setattr(env, "reward_top1", reward_top1)
    for _ in range(2):
        rollout(env, [0.5] * 3, seed=None)
    assert calls == {"prune": 2, "eval": 2}


def test_bad_construction_arguments(pruner, reward_set):
    with pytest.raises(AmcError, match="budget must be 'flops', 'params' or 'latency'"):
        make_env(pruner, reward_set, budget="joules")
    with pytest.raises(AmcError, match=exactly("a latency budget needs a latency table (PruneSpec.build with "
                                               "latency=True)")):
        make_env(pruner, reward_set, budget="latency")
    with pytest.raises(AmcError, match="reward set"):
        ChannelPruningEnv(pruner)
    with pytest.raises(TypeError, match="either a pruner or model arguments"):
        ChannelPruningEnv(pruner, reward_set, model="plain20")
    env = make_env(pruner, reward_set)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan], dtype=np.float32))

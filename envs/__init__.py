"""AMC's pruning MDP as a Gymnasium environment, built on the :mod:`amc` engine.

Importing this package registers ``amc/ChannelPruning-v0``::

    import gymnasium, envs
    env = gymnasium.make("amc/ChannelPruning-v0", model="plain20", dataset="fashion-mnist", target=0.5)
    env = gymnasium.make("amc/ChannelPruning-v0", pruner=pruner, reward_set=(x, y))
"""
from __future__ import annotations

import gymnasium

from envs.channel_pruning import ChannelPruningEnv
from envs.rewards import REWARDS, get_reward

ENV_ID = "amc/ChannelPruning-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.channel_pruning:ChannelPruningEnv")

__all__ = ["ENV_ID", "ChannelPruningEnv", "REWARDS", "get_reward"]

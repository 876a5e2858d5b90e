"""AMC's episode rewards (paper §3.3; docs/method.md#rewards).

Error is the pruned model's top-1 error in [0, 1] on the reward set, measured once per
episode with no fine-tuning. The mode decides both the formula and whether the budget wall
is on:

| name     | reward                      | budget wall                              |
| -------- | --------------------------- | ---------------------------------------- |
| ``acc``    | ``-Error``                  | on (FLOPs or params), resource-constrained |
| ``flops``  | ``-Error * log(FLOPs)``     | off, accuracy-guaranteed                 |
| ``params`` | ``-Error * log(#Params)``   | off, accuracy-guaranteed                 |

FLOPs (MACs) and params are absolute counts, as in the paper: the log makes a 2x smaller
model worth the same reward change at any scale.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from amc.errors import AmcError


@dataclass(frozen=True)
class Reward:
    """One reward mode: its formula of (error, FLOPs, params) and whether the wall is on."""

    name: str
    fn: Callable[[float, int, int], float]
    wall: bool
    """True for resource-constrained search: the env clamps actions to meet the budget."""

    def __call__(self, error: float, flops: int, params: int) -> float:
        return float(self.fn(error, flops, params))


def acc_reward(error: float, flops: int, params: int) -> float:
    """R_err = -Error (resource-constrained; the action wall keeps the budget)."""
    return -error


def flops_reward(error: float, flops: int, params: int) -> float:
    """R_FLOPs = -Error * log(FLOPs) (accuracy-guaranteed; no wall)."""
    return -error * math.log(max(flops, 1))


def params_reward(error: float, flops: int, params: int) -> float:
    """R_Param = -Error * log(#Params) (accuracy-guaranteed; no wall)."""
    return -error * math.log(max(params, 1))


REWARDS: dict[str, Reward] = {
    "acc": Reward("acc", acc_reward, True),  # -Error, with the budget wall (resource-constrained)
    "flops": Reward("flops", flops_reward, False),  # -Error * log(FLOPs), no wall (accuracy-guaranteed)
    "params": Reward("params", params_reward, False),  # -Error * log(#Params), no wall (accuracy-guaranteed)
}


def get_reward(name: str) -> Reward:
    try:
        return REWARDS[name]
    except KeyError:
        raise AmcError(f"unknown reward {name!r}; choose one of {', '.join(REWARDS)}") from None

"""AMC's episode rewards (paper §3.3; docs/method.md#rewards).

Error is the pruned model's top-1 error in [0, 1] on the reward set, measured once per
episode with no fine-tuning. The mode decides both the formula and whether the budget wall
is on:

| name     | reward                      | budget wall                              |
| -------- | --------------------------- | ---------------------------------------- |
| ``acc``    | ``-Error``                  | on (FLOPs or params), resource-constrained |
| ``flops``  | ``-Error * log(FLOPs)``     | off, accuracy-guaranteed                 |
| ``params`` | ``-Error * log(#Params)``   | off, accuracy-guaranteed                 |
| ``latency`` | ``-Error * log(latency)``  | off, accuracy-guaranteed (our extension) |

FLOPs (MACs) and params are absolute counts, as in the paper: the log makes a 2x smaller
model worth the same reward change at any scale. Latency is the table's prediction in
microseconds, so that its log stays positive for any model worth pruning.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from amc.errors import AmcError


@dataclass(frozen=True)
class Reward:
    """One reward mode: ``-Error``, or ``-Error * log(cost)`` of one resource, and whether the wall is on."""

    name: str
    resource: str | None
    """None for ``-Error``; else the resource whose absolute cost is in the log."""
    wall: bool
    """True for resource-constrained search: the env clamps actions to meet the budget."""

    def __call__(self, error: float, flops: int, params: int, latency_us: float | None = None) -> float:
        if self.resource is None:
            return float(-error)
        cost = {"flops": flops, "params": params, "latency": latency_us}[self.resource]
        if cost is None:
            raise AmcError(f"the {self.name} reward needs the model's {self.resource}")
        return float(-error * math.log(max(cost, 1)))


REWARDS: dict[str, Reward] = {
    "acc": Reward("acc", None, True),
    "flops": Reward("flops", "flops", False),
    "params": Reward("params", "params", False),
    "latency": Reward("latency", "latency", False),
}


def get_reward(name: str) -> Reward:
    try:
        return REWARDS[name]
    except KeyError:
        raise AmcError(f"unknown reward {name!r}; choose one of {', '.join(REWARDS)}") from None

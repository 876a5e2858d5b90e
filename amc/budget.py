"""Exact resource accounting for a channel plan, channel rounding and AMC's action wall.

Written by hand because no library offers it: AMC's wall
(docs/method.md#action-and-the-budget-wall) needs the FLOPs of the whole network as a
function of each group's kept channel count. Every conv/linear's MACs
and params are linear in the kept count of each group it touches, so the total is
``other + this * kept_t`` when every other count is fixed; a layer whose input and output
are the same group is the one quadratic exception, which the wall checks exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from amc.errors import AmcError
from amc.graph import LayerGraph


class Resource(Protocol):
    """What :class:`PruningState` needs of a resource: FLOPs, params or predicted latency.

    A resource is non-decreasing in each group's count (the wall's guarantee rests on it:
    later groups at their lower bound are then the cheapest completion). ``linear`` (default
    True when absent) says the cost is linear in each count, up to the self-coupled layers the
    wall confirms exactly; a non-linear resource, such as the latency table of
    :mod:`amc.latency_table`, has every candidate count checked exactly instead.
    """

    graph: LayerGraph
    kind: str
    full: float

    def full_counts(self) -> list[int]: ...

    def __call__(self, counts: Sequence[int]) -> float: ...


class ResourceModel:
    """FLOPs (MACs) or params of the model for any per-group kept channel counts."""

    linear = True  # the wall may solve for the count (see Resource)

    def __init__(self, graph: LayerGraph, kind: str = "flops") -> None:
        if kind not in ("flops", "params"):
            raise AmcError(f"budget resource must be 'flops' or 'params', got {kind!r}")
        self.graph, self.kind = graph, kind
        # per layer: (in group, out group, callable of (cin, cout))
        self._layers = [(li.in_group, li.out_group, li.macs if kind == "flops" else li.params, li.cin, li.cout)
                        for li in graph.layers.values()]
        # affine BN: 2 params per channel; those outside every group never change
        self._bn = [g for _, g in graph.norms.values() if g is not None]
        self._fixed = 0
        if kind == "params":
            self._fixed = graph.other_params + sum(2 * f for f, g in graph.norms.values() if g is None)
        self.full = self(self.full_counts())

    def full_counts(self) -> list[int]:
        return [g.channels for g in self.graph.groups]

    def __call__(self, counts: Sequence[int]) -> int:
        total = self._fixed
        for gin, gout, fn, cin, cout in self._layers:
            total += fn(cin if gin is None else counts[gin], cout if gout is None else counts[gout])
        if self.kind == "params":
            total += sum(2 * counts[g] for g in self._bn)
        return int(total)


def allowed_counts(channels: int, channel_round: int) -> list[int]:
    """Channel counts a group may keep: multiples of ``channel_round``, and all of them."""
    if channel_round <= 1:
        return list(range(1, channels + 1))
    out = list(range(channel_round, channels + 1, channel_round))
    if not out or out[-1] != channels:
        out.append(channels)
    return out


def round_channels(ratio: float, channels: int, channel_round: int) -> int:
    """``max(1, round(ratio * c))``, then the nearest allowed count (ties go up)."""
    want = max(1, int(math.floor(ratio * channels + 0.5)))
    allowed = allowed_counts(channels, channel_round)
    return min(allowed, key=lambda a: (abs(a - want), -a))


def group_counts(ratios: float | Sequence[float], groups: Sequence[Any], channel_round: int = 1) -> list[int]:
    """Each group's kept count for a preserve ratio: one ratio for every group, or one per group
    (:func:`round_channels` at the group's own step, :meth:`amc.graph.ChannelGroup.step`)."""
    per = [float(ratios)] * len(groups) if isinstance(ratios, (int, float)) else [float(r) for r in ratios]
    return [round_channels(r, g.channels, g.step(channel_round)) for r, g in zip(per, groups)]


@dataclass
class PruningState:
    """One episode's stepwise decisions, with the budget wall (docs/method.md#the-guarantee).

    ``step(ratio)`` takes the agent's preserve ratio for the current group and returns the
    ratio actually applied, after the wall and channel rounding. With ``target`` set, the
    final model's resource is at or under ``target * full``, always: at every step the
    decided groups plus every later group at its lower bound fit the budget.

    With ``fill`` (an extension; the paper has the upper wall only) there is a lower wall
    too: a group keeps at least what the budget needs if every later group stayed whole, so
    an episode ends within rounding of the target instead of wasting budget on clamped late
    layers. The upper wall wins where the two meet, so the guarantee above still holds.
    """

    resource: Resource
    target: float | None = 0.5  # fraction of the full resource; None: no wall
    lbound: float = 0.2
    channel_round: int = 1
    fill: bool = False
    counts: list[int] = field(default_factory=list)
    t: int = 0

    def __post_init__(self) -> None:
        if not (0.0 < self.lbound <= 1.0) or not math.isfinite(self.lbound):
            raise AmcError(f"lower bound must be in (0, 1], got {self.lbound}")
        if self.target is not None and (not math.isfinite(self.target) or not (0.0 < self.target <= 1.0)):
            raise AmcError(f"budget target must be in (0, 1], got {self.target}")
        if self.channel_round < 1:
            raise AmcError(f"channel_round must be >= 1, got {self.channel_round}")
        groups = self.resource.graph.groups
        if not groups:
            raise AmcError("the model has no prunable layer")
        self.min_counts = group_counts(self.lbound, groups, self.channel_round)
        if self.target is not None:
            lowest = self.resource(self.min_counts) / self.resource.full
            # the same comparison as the guarantee, or a target equal to the floor passes here
            # and ends the episode a rounding error over target * full
            if self.resource(self.min_counts) > self.budget:
                tied = self.resource.graph.residual_sets_left_alone
                hint = (f"; coupled 'shared' also prunes the {tied} channel sets tied to residual adds, which "
                        "'skip' leaves whole" if tied else "")
                raise AmcError(f"budget {self.target:.3f} is unreachable: with every prunable layer at the lower "
                               f"bound {self.lbound} the model keeps {lowest:.3f} of its {self.resource.kind}{hint}")
        self.reset()

    def reset(self) -> None:
        self.counts = self.resource.full_counts()
        self.t = 0

    @property
    def done(self) -> bool:
        return self.t >= len(self.counts)

    @property
    def budget(self) -> float:
        return math.inf if self.target is None else self.target * self.resource.full

    def wall(self) -> int:
        """The largest count for the current group that keeps the budget reachable."""
        t, g = self.t, self.resource.graph.groups[self.t]
        if self.target is None:
            return g.channels
        trial = self.counts[:t] + [0] + self.min_counts[t + 1:]
        if not getattr(self.resource, "linear", True):
            # no closed form: the largest allowed count whose model, with every later group at
            # the lower bound, fits; the fitting counts are a prefix (monotone), so bisect
            return self._search(t, trial, lambda cost: cost <= self.budget, largest=True, default=0)
        other = self.resource(trial)
        step = trial[t] = g.step(self.channel_round)  # a grouped conv's cost is linear in whole blocks
        this = (self.resource(trial) - other) / step
        if this <= 0:
            return g.channels
        k_max = math.floor((self.budget - other) / this + 1e-9)
        fitting = [a for a in allowed_counts(g.channels, step) if a <= k_max]
        # A layer that reads and writes this group (a residual block's last conv with
        # coupled="shared") adds a term quadratic in the count, so the linear estimate is an
        # upper bound only: confirm it exactly, stepping down if need be.
        for a in reversed(fitting):
            trial[t] = a
            if self.resource(trial) <= self.budget:
                return a
        return 0

    def floor(self) -> int:
        """With ``fill``: the smallest count for the current group that still lets the later
        groups, kept whole, reach the budget (a linear estimate: only a lower wall)."""
        t, g = self.t, self.resource.graph.groups[self.t]
        if self.target is None or not self.fill:
            return 0
        full = self.resource.full_counts()
        trial = self.counts[:t] + [0] + full[t + 1:]
        if not getattr(self.resource, "linear", True):
            # the smallest allowed count that reaches the budget with every later group whole
            return self._search(t, trial, lambda cost: cost >= self.budget, largest=False, default=g.channels)
        other = self.resource(trial)
        step = trial[t] = g.step(self.channel_round)
        this = (self.resource(trial) - other) / step
        if this <= 0:
            return 0
        k_min = math.ceil((self.budget - other) / this - 1e-9)
        reaching = [a for a in allowed_counts(g.channels, step) if a >= k_min]
        return min(reaching) if reaching else g.channels

    def _search(self, t: int, trial: list[int], ok: Callable[[float], bool], largest: bool, default: int) -> int:
        """Bisect the allowed counts of group ``t`` (placed in ``trial``) for the largest
        (``largest``) or smallest count whose exact cost satisfies ``ok``; ``default`` if none.

        Exact for a resource non-decreasing in the count, where the counts that satisfy ``ok``
        form a prefix (upper wall) or a suffix (lower wall). Only counts that were checked
        are returned, so the upper wall's answer fits the budget whatever the resource.
        """
        g = self.resource.graph.groups[t]
        allowed = allowed_counts(g.channels, g.step(self.channel_round))
        lo, hi, best = 0, len(allowed) - 1, default
        while lo <= hi:
            mid = (lo + hi) // 2
            trial[t] = allowed[mid]
            if ok(self.resource(trial)):
                best = allowed[mid]
                lo, hi = (mid + 1, hi) if largest else (lo, mid - 1)
            else:
                lo, hi = (lo, mid - 1) if largest else (mid + 1, hi)
        return best

    def step(self, ratio: float) -> float:
        """Apply the preserve ratio for the current group; returns the ratio actually kept."""
        if self.done:
            raise AmcError("episode already finished")
        if not math.isfinite(ratio):
            raise AmcError(f"preserve ratio must be a finite number, got {ratio}")
        g = self.resource.graph.groups[self.t]
        want = round_channels(min(max(ratio, self.lbound), 1.0), g.channels, g.step(self.channel_round))
        kept = max(min(max(want, self.floor()), self.wall()), self.min_counts[self.t])
        self.counts[self.t] = kept
        self.t += 1
        return kept / g.channels

    def ratio(self) -> float:
        return self.resource(self.counts) / self.resource.full

"""Exact resource accounting and AMC's action wall (docs/method.md#action-and-the-budget-wall).

- ``ResourceModel`` predicts, from per-group kept counts alone, the MACs and params that the
  slim model really has: checked against our counter, ``torch.utils.flop_counter`` and
  ``sum(p.numel())``.
- The wall is a guarantee: over random action sequences, models, targets and channel
  rounding, the episode ends at or under the budget after rounding, never below the lower
  bound, and an unreachable budget is refused up front.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amc.budget import PruningState, ResourceModel, allowed_counts, round_channels
from amc.errors import AmcError
from amc.flops import count_macs, count_params, flop_counter_flops
from amc.graph import build_layer_graph
from amc.models import ModelSpec, build_model
from amc.pruner import ChannelPruner

from helpers import FIXTURES, exactly

RESDW = f"{FIXTURES / 'resdw_net.py'}:factory"
SMALL_ZOO = {"plain20": 0.25, "resnet20": 0.25, "resnet56": 0.25, "vgg16": 0.125, "mobilenet": 0.125,
             "mobilenetv2": 0.25}
INPUT = (1, 28, 28)


def random_counts(pruner: ChannelPruner, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [int(torch.randint(1, grp.channels + 1, (1,), generator=g)) for grp in pruner.graph.groups]


def assert_resources_match(pruner: ChannelPruner, counts: list[int], shape: tuple[int, int, int]) -> None:
    slim = pruner.prune(counts, reconstruct=False)
    macs = count_macs(slim, shape)
    assert pruner.flops(counts) == macs
    assert flop_counter_flops(slim, shape) == 2 * macs
    assert pruner.params(counts) == count_params(slim)


# --------------------------------------------------------------------------- exact FLOPs and params

CASES = [(n, w, "skip") for n, w in SMALL_ZOO.items()] + [("resnet20", 0.25, "shared"), ("mobilenetv2", 0.25, "shared")]


@pytest.mark.parametrize("name,width,coupled", CASES, ids=[f"{n}-{c}" for n, _, c in CASES])
def test_resource_model_equals_counted_flops_and_params_of_the_slim_model(name: str, width: float,
                                                                          coupled: str) -> None:
    model = build_model(ModelSpec(name, 1, 10, width))
    pruner = ChannelPruner(model, INPUT, coupled=coupled)
    assert pruner.flops.full == count_macs(model, INPUT)
    assert pruner.params.full == count_params(model)
    assert 2 * pruner.flops.full == flop_counter_flops(model, INPUT)
    for seed in range(3):
        assert_resources_match(pruner, random_counts(pruner, seed), INPUT)
    assert_resources_match(pruner, [1] * pruner.num_layers, INPUT)


@pytest.mark.parametrize("spec,shape", [("tv:mobilenet_v2", (3, 32, 32)), (RESDW, INPUT)],
                         ids=["tv-mobilenet_v2", "resdw"])
def test_resource_model_is_exact_beyond_the_zoo(spec: str, shape: tuple[int, int, int]) -> None:
    model = build_model(ModelSpec(spec, shape[0], 10))
    for coupled in ("skip", "shared"):
        pruner = ChannelPruner(model, shape, coupled=coupled)
        assert pruner.params.full == count_params(model)
        assert_resources_match(pruner, random_counts(pruner, 0), shape)


def test_flops_and_params_count_biases_and_untouched_layers_by_hand() -> None:
    # conv(1->4, 3x3, bias) 8x8 -> conv(4->6, 3x3, stride 2, no bias) 4x4 -> pool -> linear(6->3, bias)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, 1, 1), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 6, 3, 2, 1, bias=False), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(6, 3))
    graph = build_layer_graph(model, (1, 8, 8))
    flops, params = ResourceModel(graph, "flops"), ResourceModel(graph, "params")
    assert flops.full == 1 * 4 * 9 * 64 + 4 * 6 * 9 * 16 + 6 * 3
    assert flops([2, 5]) == 1 * 2 * 9 * 64 + 2 * 5 * 9 * 16 + 5 * 3
    assert params.full == (4 * 9 + 4) + 4 * 6 * 9 + (6 * 3 + 3)
    assert params([2, 5]) == (2 * 9 + 2) + 2 * 5 * 9 + (5 * 3 + 3)
    with pytest.raises(AmcError, match=exactly("budget resource must be 'flops' or 'params', got 'latency'")):
        ResourceModel(graph, "latency")


# --------------------------------------------------------------------------- rounding

def test_channel_rounding() -> None:
    assert allowed_counts(5, 1) == [1, 2, 3, 4, 5]
    assert allowed_counts(20, 8) == [8, 16, 20]
    assert allowed_counts(6, 8) == [6]  # fewer channels than the multiple: all or nothing
    assert round_channels(0.5, 10, 1) == 5
    assert round_channels(0.25, 10, 1) == 3  # 2.5 rounds half up
    assert round_channels(0.01, 10, 1) == 1  # max(1, ...)
    assert round_channels(0.5, 20, 8) == 8  # want 10: 8 is nearer than 16
    assert round_channels(0.6, 20, 8) == 16  # want 12: a tie between 8 and 16 goes up
    assert round_channels(0.9, 20, 8) == 20


# --------------------------------------------------------------------------- the wall, as a property

# built once: hypothesis then only steps PruningState, which is pure Python arithmetic
MODELS = [(n, w, "skip") for n, w in SMALL_ZOO.items()] + [
    ("resnet20", 0.25, "shared"), ("mobilenetv2", 0.25, "shared"), (RESDW, 1.0, "shared")]
GRAPHS = {f"{n}-{c}": build_layer_graph(build_model(ModelSpec(n, 1, 10, w)), INPUT, c) for n, w, c in MODELS}
RESOURCES = {(key, kind): ResourceModel(g, kind) for key, g in GRAPHS.items() for kind in ("flops", "params")}


def floor(resource: ResourceModel, lbound: float, channel_round: int) -> float:
    """The smallest reachable resource ratio: every group at its lower-bound count."""
    return resource([round_channels(lbound, g.channels, channel_round) for g in resource.graph.groups]) / resource.full


def run_episode(resource: ResourceModel, target: float, lbound: float, channel_round: int, data) -> None:
    """Step through every group with drawn actions, checking the wall's promises as it goes."""
    groups = resource.graph.groups
    try:
        state = PruningState(resource, target, lbound, channel_round)
    except AmcError as e:
        # refused only when even the lower bound on every group is over budget
        lowest = [round_channels(lbound, g.channels, channel_round) for g in groups]
        assert resource(lowest) > target * resource.full
        assert str(e).startswith(f"budget {target:.3f} is unreachable")
        return
    # actions beyond [0, 1] too: the environment clamps whatever the agent sends
    ratios = data.draw(st.lists(st.floats(-0.5, 1.5), min_size=len(groups), max_size=len(groups)))
    for t, (g, r) in enumerate(zip(groups, ratios)):
        applied = state.step(r)
        kept = state.counts[t]
        assert applied == kept / g.channels
        assert kept >= state.min_counts[t] == round_channels(lbound, g.channels, channel_round)
        assert 0.0 < applied <= 1.0
        assert kept in allowed_counts(g.channels, channel_round)
        # never more than asked for (after rounding): the wall only ever cuts
        assert kept <= max(round_channels(min(max(r, lbound), 1.0), g.channels, channel_round), state.min_counts[t])
    assert state.done
    assert resource(state.counts) <= target * resource.full
    assert state.ratio() <= target


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(GRAPHS)), kind=st.sampled_from(["flops", "params"]),
       target=st.floats(0.2, 0.9), near_floor=st.none() | st.floats(0.0, 0.1),
       lbound=st.sampled_from([0.05, 0.2, 0.5]), channel_round=st.sampled_from([1, 4, 8]), data=st.data())
def test_wall_keeps_every_episode_within_budget(key, kind, target, near_floor, lbound, channel_round, data) -> None:
    resource = RESOURCES[key, kind]
    if near_floor is not None:  # just above the floor, the wall cuts at almost every step
        target = min(1.0, floor(resource, lbound, channel_round) + near_floor)
    run_episode(resource, target, lbound, channel_round, data)


# the graphs where one layer reads and writes one group, so its cost is quadratic in the count
SELF_COUPLED = sorted(k for k, g in GRAPHS.items() if any(g.layers[n].in_group == g.layers[n].out_group is not None
                                                          and g.layers[n].kind != "dwconv" for n in g.layers))


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(SELF_COUPLED), kind=st.sampled_from(["flops", "params"]), near_floor=st.floats(0.0, 0.1),
       lbound=st.sampled_from([0.05, 0.2, 0.5]), channel_round=st.sampled_from([1, 4, 8]), data=st.data())
def test_wall_keeps_budget_where_a_group_is_on_both_sides_of_a_layer(key, kind, near_floor, lbound, channel_round,
                                                                     data) -> None:
    resource = RESOURCES[key, kind]
    run_episode(resource, min(1.0, floor(resource, lbound, channel_round) + near_floor), lbound, channel_round, data)


def test_self_coupled_graphs_are_tested() -> None:
    assert SELF_COUPLED == [f"{RESDW}-shared", "mobilenetv2-shared"]


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(sorted(GRAPHS)), channel_round=st.sampled_from([1, 4, 8]))
def test_wall_passes_full_ratios_when_there_is_no_budget(key, channel_round) -> None:
    state = PruningState(RESOURCES[key, "flops"], None, 0.2, channel_round)
    while not state.done:
        assert state.step(1.0) == 1.0
    assert state.ratio() == 1.0


def test_wall_is_exact_when_a_layer_reads_and_writes_one_group() -> None:
    # in the shared mode of the residual+depthwise model, block1.project reads and writes group 0,
    # so group 0's FLOPs are quadratic in its kept count; at every target the wall must pick the
    # largest count whose model, with every later group at the lower bound, fits the budget
    resource = RESOURCES[f"{RESDW}-shared", "flops"]
    probe = PruningState(resource, None, 0.2, 1)
    lowest = resource(probe.min_counts) / resource.full
    for i in range(200):
        target = lowest + (1 - lowest) * i / 200
        state = PruningState(resource, target, 0.2, 1)
        fits = [k for k in range(1, 9) if resource([k] + state.min_counts[1:]) <= state.budget]
        assert state.wall() == max(fits, default=0)
        state.step(1.0)
        while not state.done:
            state.step(1.0)
        assert resource(state.counts) <= state.budget


def test_unreachable_budget_is_refused() -> None:
    resource = RESOURCES["plain20-skip", "flops"]
    with pytest.raises(AmcError, match=r"^budget 0\.010 is unreachable: with every prunable layer at the lower "
                                       r"bound 0\.2 the model keeps 0\.\d{3} of its flops$"):
        PruningState(resource, 0.01, 0.2, 1)


def test_an_unreachable_budget_with_residual_sets_left_alone_says_shared_would_prune_them() -> None:
    skip = build_layer_graph(build_model(ModelSpec("resnet20", 1, 10, 0.25)), INPUT, "skip")
    assert skip.residual_sets_left_alone == 3 and GRAPHS["resnet20-shared"].residual_sets_left_alone == 0
    with pytest.raises(AmcError, match=r"^budget 0\.010 is unreachable: with every prunable layer at the lower "
                                       r"bound 0\.2 the model keeps 0\.\d{3} of its flops; coupled 'shared' also "
                                       r"prunes the 3 channel sets tied to residual adds, which 'skip' leaves whole$"):
        PruningState(ResourceModel(skip, "flops"), 0.01, 0.2, 1)


@pytest.mark.parametrize("ratio", [math.nan, math.inf, -math.inf])
def test_step_rejects_a_ratio_that_is_not_a_number(ratio: float) -> None:
    state = PruningState(RESOURCES["plain20-skip", "flops"], 0.5)
    with pytest.raises(AmcError, match=exactly(f"preserve ratio must be a finite number, got {ratio}")):
        state.step(ratio)
    assert state.t == 0  # nothing was applied


def test_step_clamps_ratios_outside_lbound_one() -> None:
    resource = RESOURCES["plain20-skip", "flops"]
    state = PruningState(resource, None, 0.25, 1)
    c0, c1 = resource.graph.groups[0].channels, resource.graph.groups[1].channels
    assert state.step(1.5) == 1.0
    assert state.step(-0.1) == round_channels(0.25, c1, 1) / c1
    assert state.counts[:2] == [c0, round_channels(0.25, c1, 1)]


@pytest.mark.parametrize("kwargs,message", [
    ({"target": 1.5}, "budget target must be in (0, 1], got 1.5"),
    ({"target": 0.0}, "budget target must be in (0, 1], got 0.0"),
    ({"target": math.nan}, "budget target must be in (0, 1], got nan"),
    ({"lbound": 0.0}, "lower bound must be in (0, 1], got 0.0"),
    ({"lbound": math.nan}, "lower bound must be in (0, 1], got nan"),
    ({"channel_round": 0}, "channel_round must be >= 1, got 0"),
])
def test_bad_state_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(AmcError, match=exactly(message)):
        PruningState(RESOURCES["plain20-skip", "flops"], **kwargs)


def test_step_after_the_last_group_is_refused() -> None:
    state = PruningState(RESOURCES[f"{RESDW}-shared", "flops"], None)
    while not state.done:
        state.step(0.5)
    with pytest.raises(AmcError, match=exactly("episode already finished")):
        state.step(0.5)
    state.reset()
    assert state.t == 0 and state.counts == [8, 24, 16, 12, 32]  # back to full


def test_uniform_counts_meet_the_target() -> None:
    pruner = ChannelPruner(build_model(ModelSpec("plain20", 1, 10, 0.25)), INPUT)
    for target in (0.3, 0.5, 0.8):
        counts = pruner.uniform_counts(target)
        assert pruner.flops(counts) <= target * pruner.flops.full
        # the largest such uniform ratio: one more channel everywhere would be over
        assert pruner.flops([min(c + 1, g.channels) for c, g in zip(counts, pruner.graph.groups)]) \
            > target * pruner.flops.full


# --------------------------------------------------------------------------- the lower wall (fill)

def one_step_cost(resource: ResourceModel, channel_round: int) -> float:
    """The largest resource share that one rounding step of one group can move, all else whole."""
    full = resource.full_counts()
    worst = 0.0
    for t, g in enumerate(resource.graph.groups):
        below = [a for a in allowed_counts(g.channels, channel_round) if a < g.channels]
        if below:
            worst = max(worst, resource.full - resource(full[:t] + [max(below)] + full[t + 1:]))
    return worst / resource.full


LINEAR = sorted(set(GRAPHS) - set(SELF_COUPLED))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(LINEAR), kind=st.sampled_from(["flops", "params"]), target=st.floats(0.2, 0.9),
       lbound=st.sampled_from([0.05, 0.2]), channel_round=st.sampled_from([1, 4, 8]), data=st.data())
def test_fill_ends_every_episode_at_the_budget_and_never_over(key, kind, target, lbound, channel_round, data) -> None:
    resource = RESOURCES[key, kind]
    groups = resource.graph.groups
    if floor(resource, lbound, channel_round) > target:
        return
    state = PruningState(resource, target, lbound, channel_round, fill=True)
    ratios = data.draw(st.lists(st.floats(-0.5, 1.5), min_size=len(groups), max_size=len(groups)))
    for r in ratios:
        state.step(r)
    assert state.ratio() <= target  # the upper wall still wins
    assert state.ratio() >= target - one_step_cost(resource, channel_round) - 1e-12


def test_fill_raises_a_starved_policy_to_the_budget_and_leaves_the_plain_wall_alone() -> None:
    resource = RESOURCES["plain20-skip", "flops"]
    n = len(resource.graph.groups)
    plain, filled = PruningState(resource, 0.5, 0.2), PruningState(resource, 0.5, 0.2, fill=True)
    for _ in range(n):  # the agent asks for the lower bound everywhere
        plain.step(0.2)
        filled.step(0.2)
    assert plain.ratio() < 0.2  # the paper's wall only caps, so the budget goes unused
    assert 0.5 - one_step_cost(resource, 1) <= filled.ratio() <= 0.5
    assert filled.counts[-1] > plain.counts[-1]  # the last groups make up the difference


# --------------------------------------------------------------------------- the lower wall on coupled graphs

# --coupled shared on the shipped shapes, resnet20 and mobilenetv2 at width 0.5 (residual-tied
# groups), plus the small graphs where one layer reads and writes one group (quadratic costs)
COUPLED_FULL = {f"{n}@{w}-shared": build_layer_graph(build_model(ModelSpec(n, 1, 10, w)), INPUT, "shared")
                for n, w in (("resnet20", 1.0), ("mobilenetv2", 0.5))}
COUPLED = {**{k: RESOURCES[k, kind] for k in ("resnet20-shared", *SELF_COUPLED) for kind in ("flops",)},
           **{k: ResourceModel(g, "flops") for k, g in COUPLED_FULL.items()}}
COUPLED_PARAMS = {k: ResourceModel(r.graph, "params") for k, r in COUPLED.items()}


def test_coupled_graphs_are_the_shapes_asked_for() -> None:
    assert sorted(k for k in COUPLED if k in COUPLED_FULL) == ["mobilenetv2@0.5-shared", "resnet20@1.0-shared"]
    assert set(SELF_COUPLED) <= set(COUPLED)  # graphs with a layer on both sides of one group (quadratic cost)
    for key in ("resnet20@1.0-shared", "mobilenetv2@0.5-shared"):  # residual-tied groups are pruned
        assert len(COUPLED[key].graph.groups) > len(GRAPHS[key.split("@")[0] + "-skip"].groups)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(COUPLED)), kind=st.sampled_from(["flops", "params"]),
       target=st.floats(0.2, 0.9), near_floor=st.none() | st.floats(0.0, 0.1),
       lbound=st.sampled_from([0.05, 0.2]), channel_round=st.sampled_from([1, 4, 8]), data=st.data())
def test_fill_ends_every_episode_at_the_budget_on_coupled_graphs(key, kind, target, near_floor, lbound,
                                                                 channel_round, data) -> None:
    resource = (COUPLED if kind == "flops" else COUPLED_PARAMS)[key]
    lowest = floor(resource, lbound, channel_round)
    if near_floor is not None:  # just above the floor both walls bind at almost every step
        target = min(1.0, lowest + near_floor)
    groups = resource.graph.groups
    mins = [round_channels(lbound, g.channels, g.step(channel_round)) for g in groups]
    if resource(mins) > target * resource.full:  # the state's own test: lowest + 0.0 can round above it
        return
    state = PruningState(resource, target, lbound, channel_round, fill=True)
    ratios = data.draw(st.lists(st.floats(-0.5, 1.5), min_size=len(groups), max_size=len(groups)))
    for t, r in enumerate(ratios):
        state.step(r)
        assert state.counts[t] >= state.min_counts[t]
    assert resource(state.counts) <= state.budget  # the upper wall still wins
    assert state.ratio() >= target - one_step_cost(resource, channel_round) - 1e-12


def test_group_counts_rounds_one_ratio_or_one_per_group_at_each_groups_step() -> None:
    from amc.budget import group_counts
    from amc.graph import ChannelGroup

    groups = [ChannelGroup(0, 16, [], []), ChannelGroup(1, 96, [], [], unit=3), ChannelGroup(2, 10, [], [])]
    assert group_counts(0.5, groups) == [8, 48, 5]
    assert group_counts(0.5, groups, channel_round=8) == [8, 48, 8]   # 96 at lcm(8, 3) = 24; 10: 8 or all 10
    assert group_counts([1.0, 0.26, 0.0], groups, channel_round=8) == [16, 24, 8]
    assert group_counts([0.3, 0.3, 0.3], groups) == group_counts(0.3, groups)

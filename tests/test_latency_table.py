"""The latency model (issue 12): per-layer tables, the wall under a latency budget, the cache.

- Tables are made monotone (smallest monotone upper envelope) and interpolated bilinearly,
  exactly at grid points.
- The wall keeps every episode at or under a latency budget: a property test over random,
  deliberately non-monotone raw tables, random actions, and graphs with shared residual
  groups (one of them with a layer that reads and writes the same group).
- The cache round-trips; a corrupt or foreign file is rebuilt with a one-line warning.
- Only two tests time anything (a tiny net, batch 2, a 2-point grid) and neither checks a
  timing: the machine is shared and noisy.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import amc.latency_measure as lm_mod
from amc.budget import PruningState, allowed_counts, round_channels
from amc.errors import AmcError
from amc.graph import build_layer_graph
from amc.latency import Latency
from amc.latency_measure import build_latency_model, find_followers, grid_axis, plan_blocks
from amc.latency_table import (LatencyModel, LayerTable, cache_path, cache_root, load_cached, make_fingerprint,
                               monotone_envelope, save_cached)
from amc.models import ModelSpec, build_model

from helpers import FIXTURES, TINY_NET, exactly

RESDW = f"{FIXTURES / 'resdw_net.py'}:factory"
INPUT = (1, 28, 28)
MODELS = [("plain20", 0.25, "skip"), ("resnet20", 0.25, "shared"), ("mobilenetv2", 0.25, "shared"),
          (RESDW, 1.0, "shared")]
# built once: hypothesis then only builds tables and steps PruningState
GRAPHS = {f"{n}-{c}": build_layer_graph(build_model(ModelSpec(n, 1, 10, w)), INPUT, c) for n, w, c in MODELS}


def random_model(graph, seed: int, sparse: bool = True) -> LatencyModel:
    """A latency model with random, non-monotone raw tables on random grids (some not
    reaching 1 or the full count, so that clamping is exercised too)."""
    rng = np.random.default_rng(seed)
    tables = {}
    for name, li in graph.layers.items():
        if sparse and rng.random() < 0.1:
            continue  # a layer without a table: part of the remainder
        axes = []
        for c, g in ((li.cin, li.in_group), (li.cout, None if li.kind == "dwconv" else li.out_group)):
            if g is None:
                axes.append([c])
            else:
                k = int(rng.integers(1, min(c, 6) + 1))
                axes.append(sorted(int(v) for v in rng.choice(np.arange(1, c + 1), size=k, replace=False)))
        values = rng.gamma(2.0, 1.0, size=(len(axes[0]), len(axes[1]))) * rng.uniform(0.1, 10)
        tables[name] = (axes[0], axes[1], values)
    return LatencyModel.from_tables(graph, tables, remainder_ms=float(rng.uniform(0, 5)))


# --------------------------------------------------------------------------- tables

def test_envelope_of_a_non_monotone_grid_is_the_smallest_monotone_table_above_it() -> None:
    raw = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [4.0, 0.0, 0.5]])
    env = monotone_envelope(raw)
    assert env.tolist() == [[3, 3, 3], [3, 5, 5], [4, 5, 5]]
    tab = LayerTable([1, 2, 3], [1, 2, 3], raw)
    assert tab.raw_ms.tolist() == raw.tolist() and tab.ms.tolist() == env.tolist()


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=6),
                  elements=st.floats(0, 100, allow_nan=False)))
def test_envelope_is_monotone_above_and_minimal(raw: np.ndarray) -> None:
    env = monotone_envelope(raw)
    assert np.all(np.diff(env, axis=0) >= 0) and np.all(np.diff(env, axis=1) >= 0)
    assert np.all(env >= raw)
    for i in range(raw.shape[0]):  # minimal: any monotone table above raw is above the rectangle maxima
        for j in range(raw.shape[1]):
            assert env[i, j] == raw[:i + 1, :j + 1].max()


def test_bilinear_interpolation_hits_grid_points_exactly_and_clamps_outside() -> None:
    tab = LayerTable([2, 4, 8], [1, 3], [[1.0, 2.0], [3.0, 7.0], [3.5, 9.25]])
    for i, ci in enumerate(tab.in_axis):
        for j, co in enumerate(tab.out_axis):
            assert tab(ci, co) == tab.ms[i, j]
    assert tab(3, 1) == 2.0 and tab(4, 2) == 5.0  # halfway along one axis
    assert tab(3, 2) == pytest.approx((1 + 2 + 3 + 7) / 4)  # the centre of a cell
    assert tab(1, 1) == tab(0, 0) == 1.0 and tab(100, 100) == 9.25  # outside the grid: the nearest edge
    single = LayerTable([5], [16], [[0.7]])  # a side that never changes
    assert single(1, 1) == single(5, 16) == single(9, 99) == 0.7


@settings(max_examples=40, deadline=None)
@given(key=st.sampled_from(sorted(GRAPHS)), seed=st.integers(0, 2**31), data=st.data())
def test_latency_model_is_non_decreasing_in_every_group(key: str, seed: int, data) -> None:
    model = random_model(GRAPHS[key], seed)
    groups = model.graph.groups
    counts = [data.draw(st.integers(1, g.channels)) for g in groups]
    t = data.draw(st.integers(0, len(groups) - 1))
    if counts[t] < groups[t].channels:
        more = counts[:t] + [counts[t] + 1] + counts[t + 1:]
        # up to float rounding of the interpolation (an ulp of the sum); the wall returns only
        # counts it has checked, so its guarantee does not rest on this
        assert model(more) >= model(counts) * (1 - 1e-12)


@pytest.mark.parametrize("axes,values,message", [
    (([0, 2], [1]), [[1.0], [2.0]], "latency table axis must be increasing counts >= 1, got [0, 2]"),
    (([2, 2], [1]), [[1.0], [2.0]], "latency table axis must be increasing counts >= 1, got [2, 2]"),
    (([1, 2], [1]), [[1.0, 2.0]], "latency table has shape (1, 2), its axes want (2, 1)"),
    (([1], [1]), [[-1.0]], "latency table holds a negative or non-finite value"),
    (([1], [1]), [[math.nan]], "latency table holds a negative or non-finite value"),
])
def test_bad_tables_are_refused(axes, values, message) -> None:
    with pytest.raises(AmcError, match=exactly(message)):
        LayerTable(*axes, values)


def test_a_table_for_an_unknown_layer_or_a_model_of_no_time_is_refused() -> None:
    with pytest.raises(AmcError, match=exactly("latency table names layer 'nope', which the model does not have")):
        LatencyModel.from_tables(GRAPHS["plain20-skip"], {"nope": ([1], [1], [[1.0]])})
    with pytest.raises(AmcError, match=exactly("the latency model predicts no time at all for the unpruned model")):
        LatencyModel.from_tables(GRAPHS["plain20-skip"], {"conv1": ([1], [1], [[0.0]])})


def test_breakdown_and_group_costs_add_up() -> None:
    graph = GRAPHS[f"{RESDW}-shared"]
    model = random_model(graph, 3, sparse=False)
    report = model.breakdown()
    assert report["predicted_ms"] == pytest.approx(model.full) == pytest.approx(model.predicted_ms())
    assert sum(r["latency_share"] for r in report["layers"]) + report["remainder_share"] == pytest.approx(1.0)
    assert sum(r["flops_share"] for r in report["layers"]) == pytest.approx(1.0)
    assert [r["name"] for r in report["layers"]] == list(graph.layers)
    per = model.layer_ms()
    assert model.group_ms() == [pytest.approx(sum(per[n] for n in g.consumers)) for g in graph.groups]
    half = [max(1, g.channels // 2) for g in graph.groups]
    assert model.predicted_ratio(half) == pytest.approx(model(half) / model.full)


# --------------------------------------------------------------------------- the wall

def floor_ratio(model: LatencyModel, lbound: float, channel_round: int) -> float:
    return model([round_channels(lbound, g.channels, channel_round) for g in model.graph.groups]) / model.full


def fits(model: LatencyModel, state: PruningState, t: int, count: int) -> bool:
    return model(state.counts[:t] + [count] + state.min_counts[t + 1:]) <= state.budget


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(GRAPHS)), seed=st.integers(0, 2**31), target=st.floats(0.2, 0.95),
       near_floor=st.none() | st.floats(0.0, 0.1), lbound=st.sampled_from([0.05, 0.2, 0.5]),
       channel_round=st.sampled_from([1, 4, 8]), fill=st.booleans(), data=st.data())
def test_wall_keeps_every_episode_within_a_latency_budget(key, seed, target, near_floor, lbound, channel_round,
                                                          fill, data) -> None:
    model = random_model(GRAPHS[key], seed)
    groups = model.graph.groups
    if near_floor is not None:  # just above the floor, the wall cuts at almost every step
        target = min(1.0, floor_ratio(model, lbound, channel_round) + near_floor)
    try:
        state = PruningState(model, target, lbound, channel_round, fill)
    except AmcError as e:
        # refused only when even the lower bound on every group is over budget (the same
        # comparison as the guarantee: a ratio a rounding error from the target can go either way)
        assert model([round_channels(lbound, g.channels, channel_round) for g in groups]) > target * model.full
        assert str(e).startswith(f"budget {target:.3f} is unreachable")
        return
    ratios = data.draw(st.lists(st.floats(-0.5, 1.5), min_size=len(groups), max_size=len(groups)))
    for t, (g, r) in enumerate(zip(groups, ratios)):
        wall = state.wall()
        allowed = allowed_counts(g.channels, channel_round)
        # the wall is exact: the largest allowed count that fits with later groups at the bound
        assert wall in allowed and fits(model, state, t, wall)
        above = [a for a in allowed if a > wall]
        assert not above or not fits(model, state, t, above[0])
        applied = state.step(r)
        kept = state.counts[t]
        assert applied == kept / g.channels and kept in allowed
        assert state.min_counts[t] <= kept <= wall
        if not fill:  # the plain wall only ever cuts
            assert kept <= max(round_channels(min(max(r, lbound), 1.0), g.channels, channel_round),
                               state.min_counts[t])
    assert state.done
    assert model(state.counts) <= target * model.full


def test_fill_uses_the_latency_budget_and_the_plain_wall_does_not() -> None:
    model = random_model(GRAPHS["plain20-skip"], 0, sparse=False)
    target = (1 + floor_ratio(model, 0.2, 1)) / 2
    plain, filled = PruningState(model, target, 0.2), PruningState(model, target, 0.2, fill=True)
    while not plain.done:  # the agent asks for the lower bound everywhere
        plain.step(0.2)
        filled.step(0.2)
    assert plain.ratio() < filled.ratio() <= target


def test_a_latency_target_below_the_reachable_minimum_is_refused_with_that_minimum() -> None:
    model = random_model(GRAPHS["plain20-skip"], 1)
    lowest = floor_ratio(model, 0.2, 1)
    assert 0 < lowest < 1
    with pytest.raises(AmcError, match=exactly(f"budget 0.010 is unreachable: with every prunable layer at the "
                                               f"lower bound 0.2 the model keeps {lowest:.3f} of its latency")):
        PruningState(model, 0.01, 0.2, 1)


def test_no_budget_passes_full_ratios() -> None:
    state = PruningState(random_model(GRAPHS["mobilenetv2-shared"], 2), None, 0.2, 8)
    while not state.done:
        assert state.step(1.0) == 1.0
    assert state.ratio() == 1.0


# --------------------------------------------------------------------------- what is measured

def test_followers_are_found_for_modules_and_functional_activations() -> None:
    tiny = build_model(ModelSpec(f"{TINY_NET}:factory", 1, 10))
    f = find_followers(tiny, INPUT)
    assert f["0"].bn and f["0"].act[0] == "relu"
    assert not f["3"].bn and f["3"].act[0] == "relu"
    assert not f["7"].bn and f["7"].act is None
    res = find_followers(build_model(ModelSpec("resnet20", 1, 10, 0.25)), INPUT)
    assert res["layer1.0.conv1"].act[0] == "relu"  # F.relu, not a module
    assert res["layer1.0.conv2"].bn and res["layer1.0.conv2"].act is None  # the add comes first
    mb = find_followers(build_model(ModelSpec("mobilenetv2", 1, 10, 0.25)), INPUT)
    assert mb["features.1.conv.0.0"].act[0] == "hardtanh"  # ReLU6


def test_grids_and_shared_measurements() -> None:
    assert grid_axis(16, 8) == [8, 16]  # few allowed counts: all of them
    assert grid_axis(64, 8, 6, 8) == list(range(8, 65, 8))
    big = grid_axis(64, 1, 6)
    assert len(big) <= 6 and big[0] == 1 and big[-1] == 64
    rounded = grid_axis(96, 8, 6, 8)
    assert len(rounded) <= 6 and rounded[0] == 1 and rounded[-1] == 96
    assert all(c in allowed_counts(96, 8) for c in rounded[1:])
    assert grid_axis(64, 1, 2, 1) == [1, 64]
    model = build_model(ModelSpec("plain20", 1, 10, 0.25))
    specs = plan_blocks(model, GRAPHS["plain20-skip"])
    assert specs["layer1.0.conv2"].key() == specs["layer1.1.conv1"].key()  # one measurement for both
    assert specs["layer1.0.conv1"].key() != specs["layer2.0.conv1"].key()
    mb = plan_blocks(build_model(ModelSpec("mobilenetv2", 1, 10, 0.25)), GRAPHS["mobilenetv2-shared"])
    dw = mb["features.2.conv.1.0"]
    assert dw.kind == "dwconv" and len(dw.out_axis) == 1 and len(dw.in_axis) > 1
    block = dw.make(5, 999)
    assert block[0].groups == block[0].in_channels == block[0].out_channels == 5
    # a block's weight MiB is the bytes of its conv's (or linear's) parameters at those counts
    for spec, ci, co in ((dw, 5, 999), (specs["layer1.0.conv1"], 3, 7), (mb["classifier"], 6, 10)):
        layer = spec.make(ci, co)[0]
        assert spec.weight_mib(ci, co) == 4 * sum(p.numel() for p in layer.parameters()) / 2**20


# --------------------------------------------------------------------------- cache

@pytest.fixture
def fake_timing(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Replace the timers with a deterministic function of the block and its counts."""
    calls = {"blocks": 0, "models": 0}

    def measure_block(spec, batch, *args, **kwargs):
        calls["blocks"] += 1
        return np.array([[0.01 * ci * co + 0.001 * spec.in_hw[0] for co in spec.out_axis] for ci in spec.in_axis])

    def end_to_end(models, *args, **kwargs):
        calls["models"] += 1
        return {n: Latency(2, [100.0]) for n in models}

    monkeypatch.setattr(lm_mod, "measure_block", measure_block)
    monkeypatch.setattr(lm_mod, "end_to_end", end_to_end)
    return calls


def tiny_setup():
    model = build_model(ModelSpec(RESDW, 1, 10))
    return model, build_layer_graph(model, INPUT, "shared")


def test_cache_round_trips(tmp_path, fake_timing, capsys) -> None:
    model, graph = tiny_setup()
    first = build_latency_model(model, graph, batch=2, cache_dir=tmp_path, progress=False)
    assert not first.from_cache and first.cache_file.exists() and first.cache_file.parent == tmp_path
    n = fake_timing["blocks"]
    assert 0 < n < len(graph.layers) + 1  # block1.dw/project etc. measured once per distinct shape
    second = build_latency_model(model, graph, batch=2, cache_dir=tmp_path, progress=False)
    assert second.from_cache and fake_timing["blocks"] == n
    counts = [max(1, g.channels // 3) for g in graph.groups]
    assert second(counts) == first(counts) and second.full == first.full
    assert second.meta["fingerprint"] == first.meta["fingerprint"]
    assert second.remainder_ms == first.remainder_ms
    assert capsys.readouterr().err == ""
    # another target (batch) is another file
    third = build_latency_model(model, graph, batch=4, cache_dir=tmp_path, progress=False)
    assert not third.from_cache and third.cache_file != first.cache_file


@pytest.mark.parametrize("damage,why", [
    (lambda p: p.write_text("{ not json"), "is corrupt (JSONDecodeError)"),
    (lambda p: p.write_text("[1, 2]"), "is corrupt (not a JSON object)"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "tables": {}})), "is corrupt (KeyError"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()),
                                        "fingerprint": {**json.loads(p.read_text())["fingerprint"],
                                                        "cpu": "some other CPU"}})), "was made for another cpu"),
])
def test_a_corrupt_or_foreign_cache_file_is_rebuilt_with_a_warning(tmp_path, fake_timing, capsys, damage,
                                                                   why) -> None:
    model, graph = tiny_setup()
    path = build_latency_model(model, graph, batch=2, cache_dir=tmp_path, progress=False).cache_file
    capsys.readouterr()
    damage(path)
    n = fake_timing["blocks"]
    again = build_latency_model(model, graph, batch=2, cache_dir=tmp_path, progress=False)
    assert not again.from_cache and fake_timing["blocks"] > n
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: latency table {path} ") and why in err[0], err
    assert err[0].endswith("; rebuilding it")
    assert build_latency_model(model, graph, batch=2, cache_dir=tmp_path, progress=False).from_cache  # fixed


def test_a_second_builder_waits_for_the_table_being_built_then_loads_it(tmp_path, fake_timing, capsys) -> None:
    """Searches started together build one table: the second waits for the first, then loads it."""
    import threading
    import time

    from filelock import FileLock

    model, graph = tiny_setup()
    path = build_latency_model(model, graph, batch=2, cache_dir=tmp_path, progress=False).cache_file
    built = path.read_text()
    path.unlink()
    n = fake_timing["blocks"]
    first = FileLock(f"{path}.lock")
    first.acquire()  # another process is building this table
    got: dict = {}
    second = threading.Thread(target=lambda: got.update(
        lm=build_latency_model(model, graph, batch=2, cache_dir=tmp_path, progress=False)))
    second.start()
    time.sleep(0.5)
    assert second.is_alive() and fake_timing["blocks"] == n  # waiting, not timing
    path.write_text(built)  # the first one wrote its table
    first.release()
    second.join(30)
    assert got["lm"].from_cache and fake_timing["blocks"] == n
    assert capsys.readouterr().err == (f"note: another process is building the latency table {path}; "
                                       "waiting for it\n")


def test_a_cache_folder_that_cannot_be_made_costs_a_warning_not_the_table(tmp_path, fake_timing, capsys) -> None:
    model, graph = tiny_setup()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    lm = build_latency_model(model, graph, batch=2, cache_dir=blocker, progress=False)
    assert not lm.from_cache and lm.full > 0 and fake_timing["blocks"] > 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: cannot cache the latency table: "), err


def test_cache_location(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("AMC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "amc"
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("AMC_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "amc"


def test_fingerprint_and_direct_save_load(tmp_path, capsys) -> None:
    graph = GRAPHS["plain20-skip"]
    fp = make_fingerprint("torch", 64, 1, {"layers": ["x"]})
    assert {"cpu", "runtime", "runtime_version", "threads", "batch", "shapes"} <= set(fp)
    assert fp["runtime_version"] == torch.__version__ and fp["batch"] == 64 and fp["threads"] == 1
    assert make_fingerprint("torch", 64, 1, {"layers": ["y"]})["shapes"] != fp["shapes"]
    model = random_model(graph, 5, sparse=False)
    model.meta["fingerprint"] = fp
    path = cache_path(tmp_path, fp)
    save_cached(path, model)
    back = load_cached(path, fp, graph)
    counts = [max(1, g.channels // 2) for g in graph.groups]
    assert back(counts) == model(counts)
    assert load_cached(tmp_path / "missing.json", fp, graph) is None and capsys.readouterr().err == ""
    with pytest.raises(AmcError, match="runtime must be 'torch' or 'ort'"):
        make_fingerprint("tvm", 1, 1, {})


def test_use_cache_false_writes_nothing(tmp_path, fake_timing) -> None:
    model, graph = tiny_setup()
    lm = build_latency_model(model, graph, batch=2, cache_dir=tmp_path, use_cache=False, progress=False)
    assert lm.cache_file is None and not any(tmp_path.iterdir())


def test_isolated_blocks_over_the_whole_model_are_scaled_down(tmp_path, fake_timing, monkeypatch) -> None:
    model, graph = tiny_setup()
    monkeypatch.setattr(lm_mod, "end_to_end", lambda models, *a, **k: {n: Latency(2, [0.05]) for n in models})
    lm = build_latency_model(model, graph, batch=2, cache_dir=tmp_path, progress=False)
    assert lm.meta["tables_scale"] < 1 and lm.remainder_ms == pytest.approx(0.0, abs=1e-12)
    assert lm.full == pytest.approx(0.05)


@pytest.mark.parametrize("c, g", [(3.0, 0.0), (-0.5, 0.0), (3.0, 40.0), (-0.5, 40.0)])
def test_whole_models_fit_the_tables_exactly(tmp_path, fake_timing, monkeypatch, c, g) -> None:
    """With a slim-model builder the base and the calibration models are timed. When their times
    are ``scale * (tables + g * weight MiB + c)``, the fit recovers scale, g and c exactly: a
    remainder for c >= 0, a per-table shift for c < 0 (here half the tables' smallest entries);
    the tables stay monotone."""
    from amc.latency_fit import calibration_policies
    from amc.pruner import ChannelPruner

    model, _ = tiny_setup()
    pruner = ChannelPruner(model, INPUT, coupled="shared")
    plans = calibration_policies(pruner.graph.groups)
    assert len(plans) == 9 and len({tuple(p) for p in plans}) == 9

    def build(**kw):
        return build_latency_model(pruner.model, pruner.graph, batch=2, cache_dir=tmp_path, progress=False,
                                   slim=lambda counts: pruner.prune(counts, reconstruct=False), **kw)

    first = build()  # every model timed alike: nothing to fit, the tables are kept as measured
    assert first.meta["tables_scale"] == 1.0 and first.meta["tables_shift"] == 0.0
    assert first.meta["calibration"]["counts"] == plans
    assert first.meta["weights_ms_per_mib"] == 0.0
    cal = first.meta["calibration"]
    tables = {"model": first.meta["tables_full_ms"] + g * first.meta["weights_full_mib"],
              **{f"cal-{i}": t + g * w for i, (t, w) in enumerate(zip(cal["tables_ms"], cal["weights_mib"]))}}
    if c < 0:
        c *= sum(first.tables[n].ms.min() for n in first.layer_ms())
    monkeypatch.setattr(lm_mod, "end_to_end", lambda models, *a, **k:
                        {n: Latency(2, [7.0 * (tables[n] + c)]) for n in models})
    lm = build(rebuild=True)
    assert lm.full == pytest.approx(7.0 * (tables["model"] + c))
    for i, counts in enumerate(plans):
        assert lm(counts) == pytest.approx(7.0 * (tables[f"cal-{i}"] + c))
    assert lm.meta["tables_scale"] == pytest.approx(7.0)
    assert lm.meta["weights_ms_per_mib"] == pytest.approx(7.0 * g, abs=1e-9)
    if c > 0:
        assert lm.remainder_ms == pytest.approx(21.0) and lm.meta["tables_shift"] == 0.0
    else:
        assert lm.remainder_ms == 0.0 and lm.meta["tables_shift"] == pytest.approx(0.5)
    for tab in lm.tables.values():
        assert np.all(np.diff(tab.ms, axis=0) >= 0) and np.all(np.diff(tab.ms, axis=1) >= 0)
        assert np.all(tab.ms > 0)


@pytest.mark.parametrize("base, tb, ratios, tables, floor, want", [
    (100.0, 80.0, [], [], 0.0, (1.0, 20.0, 0.0, 0.0)),                 # no slim models: the rest is the remainder
    (100.0, 150.0, [], [], 0.0, (100 / 150, 0.0, 0.0, 0.0)),           # tables over the model: scaled down
    (100.0, 0.0, [0.5], [0.0], 0.0, (1.0, 100.0, 0.0, 0.0)),           # no table costs time: all remainder
    (100.0, 80.0, [0.5, 0.7], [30.0, 50.0], 10.0, (1.0, 20.0, 0.0, 0.0)),   # c = 20: a remainder
    (100.0, 80.0, [20 / 70, 40 / 70], [30.0, 50.0], 20.0, (100 / 70, 0.0, 0.5, 0.0)),  # c = -10: a shift
    (100.0, 80.0, [0.0, 20 / 50], [30.0, 50.0], 20.0, (100 / 62, 0.0, 0.9, 0.0)),      # c = -30: shift capped
    (100.0, 80.0, [1.0], [80.0], 0.0, (1.0, 20.0, 0.0, 0.0)),          # a model timed as the base: no fit
])
def test_calibrate(base, tb, ratios, tables, floor, want) -> None:
    from amc.latency_fit import calibrate

    assert calibrate(base, tb, ratios, tables, floor) == pytest.approx(want)


@pytest.mark.parametrize("c, g", [(5.0, 2.0), (-4.0, 3.0), (5.0, -2.0)])
def test_calibrate_fits_a_cost_per_weight_mib(c, g) -> None:
    """Whole models timed as ``T + g W + c`` give back ``g`` and ``c`` exactly (the scale is 1);
    a negative ``g`` is never used (it would make keeping weights faster): c alone is fitted."""
    from amc.latency_fit import calibrate

    rng = np.random.default_rng(0)
    tb, wb, floor = 80.0, 10.0, 20.0
    t, w = rng.uniform(10, 70, 9), rng.uniform(1, 9, 9)
    ratios = (t + g * w + c) / (tb + g * wb + c)
    scale, remainder, shift, per_mib = calibrate(tb + g * wb + c, tb, ratios, t, floor, wb, w)
    if g < 0:
        assert per_mib == 0.0
        predicted = scale * (t + remainder / scale - shift * floor)
        assert np.all(predicted > 0)
        return
    assert (scale, per_mib) == pytest.approx((1.0, g))
    assert (remainder, shift) == (pytest.approx(c), 0.0) if c > 0 else (0.0, pytest.approx(-c / floor))


@pytest.mark.parametrize("runtime", ["torch", "ort"])
def test_end_to_end_times_independent_copies_and_keeps_their_median(monkeypatch, runtime) -> None:
    """``copies=3``: every model runs as three distinct copies (deep copies; sessions of one
    export), side by side in one interleaved run, and each round counts the copies' median."""
    import amc.latency_runtime as lr

    if runtime == "ort":
        pytest.importorskip("onnxruntime")
    seen = {}

    def fake(timed, input_shape, batch_sizes, repeats, warmup, **kw):
        seen["timed"] = list(timed.values())
        # copy j of model i takes (10 * (i + 1) + j) ms in round 0, and one ms more each round
        return {k: {batch_sizes[0]: Latency(batch_sizes[0], [10.0 * (int(k) // 3 + 1) + int(k) % 3 + r
                                                             for r in range(repeats)])} for k in timed}

    monkeypatch.setattr(lr, "interleaved_latency", fake)
    model = build_model(ModelSpec(f"{TINY_NET}:factory", 1, 10))
    res = lr.end_to_end({"a": model, "b": model}, INPUT, 2, runtime, repeats=4, copies=3)
    assert res["a"].samples_ms == [11.0, 12.0, 13.0, 14.0] and res["b"].samples_ms == [21.0, 22.0, 23.0, 24.0]
    copies = seen["timed"]
    assert len(copies) == 6 and len({id(m) for m in copies}) == 6
    if runtime == "ort":
        assert len({id(m.session) for m in copies}) == 6 and len({m.path for m in copies[:3]}) == 1
    else:
        assert all(m is not model for m in copies)
    with pytest.raises(ValueError, match="copies"):
        lr.end_to_end({"a": model}, INPUT, 2, runtime, copies=0)


@pytest.mark.parametrize("runtime, channel_round, warned", [("ort", 1, True), ("ort", 4, True), ("ort", 8, False),
                                                          ("ort", 16, False), ("torch", 1, False)])
def test_ort_with_counts_off_multiples_of_8_warns(monkeypatch, capsys, runtime, channel_round, warned) -> None:
    """onnxruntime runs counts off multiples of 8 far slower than the tables say: one warning line."""
    import amc.latency_measure
    from amc.errors import forget_warnings
    from amc.spec import PruneSpec

    monkeypatch.setattr(amc.latency_measure, "build_latency_model", lambda *a, **k: "table")
    forget_warnings()
    pruner = type("P", (), {"model": None, "graph": None, "input_shape": INPUT})()
    spec = PruneSpec(model="plain20", runtime=runtime, channel_round=channel_round)
    assert spec.latency_model(pruner) == "table"
    err = capsys.readouterr().err
    assert (err.startswith(f"warning: --runtime ort with --channel-round {channel_round}: ") and
            err.count("\n") == 1 and "--channel-round 8 avoids it" in err) if warned else err == ""


def test_per_group_savings_compare_each_group_cut_alone(tmp_path, fake_timing, monkeypatch) -> None:
    """Each group is cut alone (the others full) and timed in one run with the base; where the
    measurement is the table's own prediction, every measured saving equals the predicted one."""
    import amc.latency_bench as lb
    from amc.budget import round_channels
    from amc.pruner import ChannelPruner

    model, _ = tiny_setup()
    pruner = ChannelPruner(model, INPUT, coupled="shared")
    lm = build_latency_model(pruner.model, pruner.graph, batch=2, cache_dir=tmp_path, progress=False)
    groups = pruner.graph.groups
    plans = {"base": [g.channels for g in groups]}
    for i, g in enumerate(groups):
        plans[f"group-{i}"] = [round_channels(0.5, h.channels, h.step(1)) if h is g else h.channels for h in groups]
    seen = {}

    def end_to_end(models, input_shape, batch, runtime, threads, *a, **k):
        seen.update(names=list(models), batch=batch, runtime=runtime)
        return {n: Latency(batch, [lm(plans[n])]) for n in models}

    monkeypatch.setattr(lb, "end_to_end", end_to_end)
    res = lb.per_group_savings(pruner, lm)
    assert seen == {"names": list(plans), "batch": 2, "runtime": "torch"}  # one run: the base and every cut
    assert [r["kept"] for r in res["groups"]] == [plans[f"group-{i}"][i] for i in range(len(groups))]
    for r in res["groups"]:
        assert r["measured_saving"] == pytest.approx(r["predicted_saving"]) and r["measured_saving"] >= 0
    assert res["correlation"] == pytest.approx(1.0) and res["measured_sum"] == pytest.approx(res["predicted_sum"])
    lb.groups_png(res, tmp_path / "groups.png")
    assert (tmp_path / "groups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(AmcError, match="ratio must be in"):
        lb.per_group_savings(pruner, lm, ratio=1.0)


# --------------------------------------------------------------------------- real timing (tiny)

def test_real_torch_table_of_a_tiny_net(tmp_path) -> None:
    """Times a tiny net (batch 2, a 2-point grid, 2 rounds): a few seconds; checks structure only."""
    from amc.latency_bench import predict_vs_measure
    from amc.pruner import ChannelPruner

    threads = torch.get_num_threads()
    pruner = ChannelPruner(build_model(ModelSpec(f"{TINY_NET}:factory", 1, 10)), INPUT)
    lm = build_latency_model(pruner.model, pruner.graph, batch=2, threads=1, grid_points=2, exact_points=1,
                             cache_dir=tmp_path, progress=False, repeats=2, warmup=1, min_sample_ms=0.2)
    assert torch.get_num_threads() == threads  # restored
    assert set(lm.tables) == set(pruner.graph.layers)
    for tab in lm.tables.values():
        assert np.all(np.isfinite(tab.ms)) and np.all(tab.ms >= 0)
        assert np.all(np.diff(tab.ms, axis=0) >= 0) and np.all(np.diff(tab.ms, axis=1) >= 0)
    assert lm.full > 0 and lm.meta["measured_full_ms"] > 0 and lm.meta["runtime"] == "torch"
    assert lm.tables["0"].in_axis == [1] and lm.tables["0"].out_axis == [1, 4]
    state = PruningState(lm, None, 0.2, 1)
    while not state.done:
        state.step(0.5)
    res = predict_vs_measure(pruner, lm, policies=2, repeats=2, warmup=1, plot=tmp_path / "scatter.png")
    assert [r["policy"] for r in res["policies"]] == ["uniform", "random-0", "random-1"]
    for r in res["policies"]:
        assert r["measured_ms"] > 0 and r["predicted_ms"] > 0 and 0 < r["flops_ratio"] <= 1
    assert res["p90_abs_rel_err"] <= res["max_abs_rel_err"] and res["min_sample_ms"] == 5.0
    assert (tmp_path / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_real_ort_table_of_a_tiny_net(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    model = build_model(ModelSpec(f"{TINY_NET}:factory", 1, 10))
    graph = build_layer_graph(model, INPUT)
    lm = build_latency_model(model, graph, runtime="ort", batch=2, threads=1, grid_points=2, exact_points=1,
                             cache_dir=tmp_path, progress=False, repeats=2, warmup=1, min_sample_ms=0.2)
    assert lm.meta["runtime"] == "ort" and lm.meta["fingerprint"]["runtime"] == "ort"
    assert lm.full > 0 and all(np.all(t.ms >= 0) for t in lm.tables.values())


def test_uniform_ladder_lists_each_uniform_model_once_in_order() -> None:
    from amc.graph import ChannelGroup
    from amc.latency_bench import uniform_ladder

    groups = [ChannelGroup(i, c, [], []) for i, c in enumerate((16, 32, 64))]
    ladder = uniform_ladder(groups, channel_round=8, lbound=0.2)
    counts = [tuple(c) for _, c in ladder]
    assert len(set(counts)) == len(counts) and counts[0] == (8, 8, 16) and counts[-1] == (16, 32, 64)
    assert all(c % 8 == 0 for cs in counts for c in cs)
    assert [r for r, _ in ladder] == sorted(r for r, _ in ladder)
    # every count vector is monotone along the ladder: a larger ratio never keeps fewer channels
    assert all(all(a <= b for a, b in zip(x, y)) for x, y in zip(counts, counts[1:]))


def test_the_nearest_uniform_model_is_decided_in_a_runoff_timed_together(monkeypatch) -> None:
    """One noisy first timing does not pick the baseline: the nearest few are timed again with
    the policy in one run, and the run-off decides."""
    import amc.latency_bench as lb
    from amc.latency import Latency

    class Pruner:
        model, input_shape = nn.Identity(), (1, 8, 8)

        def prune(self, counts, reconstruct=True):
            assert reconstruct is False  # weights do not change the speed
            return nn.Identity()

    rows = [{"policy": "policy", "counts": [4], "measured_ratio": 0.50},
            {"policy": "uniform-0.4", "counts": [2], "measured_ratio": 0.41},
            {"policy": "uniform-0.5", "counts": [3], "measured_ratio": 0.51},  # nearest by its first timing
            {"policy": "uniform-0.6", "counts": [5], "measured_ratio": 0.62},
            {"policy": "uniform-0.9", "counts": [7], "measured_ratio": 0.90}]
    runoff_ms = {"base": 10.0, "policy": 5.0, "uniform-0.4": 4.1, "uniform-0.5": 6.2, "uniform-0.6": 6.4}
    timed = []

    def fake_end_to_end(models, input_shape, batch, runtime, threads, repeats, warmup):
        timed.append(set(models))
        return {n: Latency(batch, [runoff_ms[n]] * repeats) for n in models}

    monkeypatch.setattr(lb, "end_to_end", fake_end_to_end)
    near = lb.nearest_uniform(Pruner(), rows, "torch", 64, 1, candidates=3, repeats=5)
    assert timed == [{"base", "policy", "uniform-0.4", "uniform-0.5", "uniform-0.6"}]  # one run; 0.9 is too far
    assert near["policy"] == "uniform-0.4" and near["counts"] == [2]
    assert near["measured_ratio"] == pytest.approx(0.41)
    assert near["runoff"] == pytest.approx({"policy": 0.5, "uniform-0.4": 0.41, "uniform-0.5": 0.62,
                                            "uniform-0.6": 0.64})
    assert lb.nearest_uniform(Pruner(), rows[:1], "torch", 64, 1) is None


def test_blocks_timed_under_the_run_overhead_leave_the_whole_model_to_the_remainder(tmp_path, monkeypatch) -> None:
    import amc.latency_measure as lmeasure

    zeros = lambda spec, *a, **k: np.zeros((len(spec.in_axis), len(spec.out_axis)))  # noqa: E731
    monkeypatch.setattr(lmeasure, "measure_block", zeros)
    model = build_model(ModelSpec(f"{TINY_NET}:factory", 1, 10))
    graph = build_layer_graph(model, INPUT)
    lm = build_latency_model(model, graph, batch=2, threads=1, grid_points=2, exact_points=1, cache_dir=tmp_path,
                             progress=False, repeats=2, warmup=1, min_sample_ms=0.2)
    assert lm.full == pytest.approx(lm.meta["measured_full_ms"]) and lm.full > 0
    assert lm.remainder_ms == lm.full and lm(lm.full_counts()) == lm([1] * len(graph.groups))  # no layer costs time


def _stat(tmp_path, busy: list[int], idle: list[int], name: str) -> str:
    """A /proc/stat with one line per CPU: user ticks ``busy[i]``, idle ticks ``idle[i]``."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{i} {b} 0 0 {d} 0 0 0 0 0 0" for i, (b, d) in enumerate(zip(busy, idle))]
    path = tmp_path / name
    path.write_text("\n".join(lines + ["intr 1 2 3"]) + "\n")
    return str(path)


def test_busy_cpus_counts_only_this_process_cpus_and_the_warning_names_them(tmp_path, monkeypatch, capsys) -> None:
    import amc.latency as lat

    before, after = _stat(tmp_path, [0, 0, 0], [0, 0, 0], "a"), _stat(tmp_path, [75, 0, 100], [25, 100, 0], "b")
    monkeypatch.setattr(lat.os, "sched_getaffinity", lambda pid: {0, 1})  # cpu2 (all busy) is not ours
    reads = iter([before, after])
    real = lat._cpu_jiffies
    monkeypatch.setattr(lat, "_cpu_jiffies", lambda cpus, stat: real(cpus, next(reads)))
    monkeypatch.setattr(lat.time, "sleep", lambda s: None)
    monkeypatch.setattr(lat.time, "process_time", iter([0.0, 0.1]).__next__)  # our own threads' 0.1 s
    own = 0.1 * lat.os.sysconf("SC_CLK_TCK")
    assert lat.busy_cpus() == (pytest.approx((75 - own) / 200 * 2), 2)  # 75 busy of 200 ticks, less ours, on 2 CPUs

    monkeypatch.setattr(lat, "busy_cpus", lambda: (1.6, 2))
    monkeypatch.setattr(lat, "_load_checked", False)
    monkeypatch.setenv(lat.NO_LOAD_CHECK, "1")
    lat.warn_if_busy(1)
    assert capsys.readouterr().err == ""  # switched off
    monkeypatch.delenv(lat.NO_LOAD_CHECK)
    lat.warn_if_busy(1)
    lat.warn_if_busy(1)  # once per process
    assert capsys.readouterr().err == ("warning: other processes keep 1.6 of this machine's 2 CPUs busy: the "
                                       "timings that follow will be noisy (time on a quiet machine)\n")
    monkeypatch.setattr(lat, "_load_checked", False)
    monkeypatch.setattr(lat, "busy_cpus", lambda: (0.4, 2))
    lat.warn_if_busy(1)
    assert capsys.readouterr().err == ""  # half a CPU or less is a quiet machine

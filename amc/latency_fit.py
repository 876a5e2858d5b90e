"""Fitting the per-layer tables to whole models timed end to end.

An isolated block does not cost exactly what it costs inside the network: it pays per-call
costs the network pays once, misses what the network spends outside the tables (stem input,
pooling, adds), and runs with its weights in cache where a network whose weights outgrow the
cache does not. :func:`amc.latency_measure.build_latency_model` therefore times the base and
the slim models of :func:`calibration_policies` end to end and fits, with :func:`calibrate`, a
scale, a constant (or a per-table shift) and a cost per MiB of weights to their measured
latency ratios (docs/method.md, "Latency").
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from amc.budget import group_counts


def calibration_policies(groups: Sequence[Any], channel_round: int = 1, n: int = 8, lbound: float = 0.2,
                         seed: int = 1) -> list[list[int]]:
    """The slim models the tables are calibrated on: uniform half width, and ``n`` random
    policies whose mean preserve ratio is spread over 0.35-0.9 (where latency searches look:
    roughly 0.2-0.8 of the base latency), each layer's ratio drawn in ``[lbound, 1]``.

    Drawn without the tables (they are timed before the blocks, see :func:`build_latency_model`),
    from a seeded generator of their own, apart from ``amc bench latency``'s policies.
    """
    rng = np.random.default_rng(seed)
    out = [group_counts(0.5, groups, channel_round)]
    for mean in np.linspace(0.35, 0.9, n):
        raw = rng.uniform(lbound, 1.0, len(groups))
        ratios = np.clip(raw * (mean / raw.mean()), lbound, 1.0)
        out.append(group_counts(ratios, groups, channel_round))
    return out


def calibrate(base_ms: float, tables_base: float, ratios: Sequence[float] = (), tables: Sequence[float] = (),
              floor: float = 0.0, weights_base: float = 0.0,
              weights: Sequence[float] = ()) -> tuple[float, float, float, float]:
    """Fit the tables to whole models: ``(scale, remainder, shift, ms_per_mib)``.

    The prediction of a model whose tables sum to ``T`` and whose layers hold ``W`` MiB of
    weights is ``scale * (T + g W + c)``:

    - ``c >= 0`` is the remainder (what no table covers: stem input, pooling, classifier glue,
      Python overhead); ``c < 0`` a per-block cost that isolated blocks pay and the network
      does not (onnxruntime's reorders at every block's input and output; dispatch and
      allocation per call, which dominate at batch 1), taken off every table as the same
      fraction ``shift`` of its smallest entry (``floor`` is the sum of those over the layers;
      ``shift <= 0.9``).
    - ``g >= 0`` (ms per MiB, returned times ``scale``) is what the network pays to fetch a
      layer's weights that an isolated block, timed back to back, finds in the core's cache: in
      one pass through a net whose weights outgrow that cache every layer's come from further
      out (measured: mobilenetv2 0.5's head conv runs 3x its warm difference between 1280 and
      640 channels once 4 MiB were touched in between). Weight bytes are bilinear in the kept
      counts, so the term adds to every table exactly and keeps it monotone.

    ``c`` and ``g`` are fitted by least squares on the measured slim/base latency ratios of the
    calibration models (``ratios`` of models whose tables sum to ``tables`` and whose weights
    are ``weights`` MiB; ``weights_base`` the base's), the quantity a latency budget is stated
    in and that drift of the machine during the build does not move; ``g`` is 0 where the fit
    wants it negative or no weights are given, and ``scale`` then makes the base exact. A
    positive scale, a per-table constant and a non-negative weights term keep every table
    monotone, so the wall's guarantee holds.

    Without calibration models, or when they do not determine ``c``, the tables are only
    scaled down to the base, as far as needed (``c`` is the base's time left over, if any).
    """
    if tables_base <= 0:
        return 1.0, max(0.0, base_ms), 0.0, 0.0
    rho, t = np.asarray(ratios, dtype=np.float64), np.asarray(tables, dtype=np.float64)
    wts = np.asarray(weights, dtype=np.float64) if len(weights) else np.zeros_like(rho)
    # (T_i + g W_i + c) / (T_b + g W_b + c) = rho_i  <=>  c (1 - rho_i) + g (W_i - rho_i W_b)
    # = rho_i T_b - T_i; residuals weighted by 1 / rho_i, so the fit is in relative error of
    # the ratio (times the constant T_b + g W_b + c)
    inv = 1.0 / np.maximum(rho, 1e-9)
    a, aw, b = (1.0 - rho) * inv, (wts - rho * weights_base) * inv, (rho * tables_base - t) * inv
    den = float(a @ a)
    if not len(rho) or den <= 1e-12 * max(1.0, tables_base) ** 2:
        scale = min(1.0, base_ms / tables_base)
        return scale, max(0.0, base_ms - scale * tables_base), 0.0, 0.0
    c, g = float(a @ b) / den, 0.0
    if float(aw @ aw) > 1e-12 * den:
        (c2, g2), *_ = np.linalg.lstsq(np.stack([a, aw], 1), b, rcond=None)
        if g2 > 0:
            c, g = float(c2), float(g2)
    if c < -0.9 * floor:  # the shift's cap; the weights term refitted with c held there
        c = -0.9 * floor
        g = max(0.0, float(aw @ (b - a * c)) / float(aw @ aw)) if float(aw @ aw) > 1e-12 * den else 0.0
    scale = base_ms / (tables_base + g * weights_base + c)
    if c >= 0:
        return scale, scale * c, 0.0, scale * g
    return scale, 0.0, -c / floor, scale * g

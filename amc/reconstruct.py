"""Least-squares weight reconstruction with cached normal equations
(docs/method.md#channel-selection-and-reconstruction).

Written by hand: no library refits a conv on a subset of its input channels. For each
consumer layer we sample (input patch, output) pairs from calibration batches passed
through the *original* model, and keep only ``X^T X`` and ``X^T Y``. An episode then
solves ``(X_k^T X_k + ridge I) W = X_k^T Y`` on the kept rows/columns: a small system,
instead of the official code's sklearn fit on 30k rows per layer per episode.
"""
from __future__ import annotations

import sys
import weakref
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from amc.graph import LayerGraph


class FeatureCache:
    """``X^T X`` and ``X^T Y`` (float64) for every consumer layer of every group.

    Memory: ``8 * d * (d + n)`` bytes per layer, with ``d = c * k * k`` inputs and ``n`` outputs
    (``nbytes`` reports the total; 19.6 MiB for plain20, 478 MiB for tv:resnet18).

    Args:
        model: the original model.
        graph: its layer graph.
        batches: calibration image batches (from the training split).
        points_per_image: output positions sampled per image for k x k convs (official: 10).
        seed: seed of the position sampling.
        ridge: Tikhonov term, relative to the mean diagonal of ``X^T X``.
    """

    def __init__(self, model: nn.Module, graph: LayerGraph, batches: Iterable[torch.Tensor],
                 points_per_image: int = 10, seed: int = 0, ridge: float = 1e-6, progress: bool = False) -> None:
        self.graph, self.ridge = graph, ridge
        self.layers = sorted({n for g in graph.groups for n in g.consumers}, key=lambda n: graph.layers[n].order)
        self.xtx: dict[str, torch.Tensor] = {}
        self.xty: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {n: 0 for n in self.layers}
        self.out_scale: dict[str, torch.Tensor] = {}
        """Per consumer whose output goes straight into a BatchNorm: that norm's per-channel scale
        ``gamma / sqrt(var + eps)`` (float64), so errors can be weighed as the network sees them."""
        self.underdetermined: dict[str, tuple[int, int]] = {}
        """Layers refitted with fewer calibration rows than unknowns: (rows, unknowns), warned once each."""
        self._collect(model, batches, points_per_image, seed, progress)

    @staticmethod
    def estimate_nbytes(model: nn.Module, graph: LayerGraph) -> int:
        """The cache's size before it is built: ``8 d (d + n)`` bytes per consumer layer."""
        total = 0
        for name in {n for g in graph.groups for n in g.consumers}:
            m = model.get_submodule(name)
            if isinstance(m, nn.Conv2d):
                d, n = m.in_channels * m.kernel_size[0] * m.kernel_size[1], m.out_channels
            else:
                d, n = m.weight.shape[1], m.weight.shape[0]
            total += 8 * d * (d + n)
        return total

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.xtx, self.xty) for t in d.values())

    @torch.no_grad()
    def _collect(self, model: nn.Module, batches: Iterable[torch.Tensor], points: int, seed: int, progress: bool) -> None:
        g = torch.Generator().manual_seed(seed)
        names = {m: n for n, m in model.named_modules()}
        # the consumers' outputs of this forward, by id; weak, so no activation outlives its use
        outputs: dict[int, tuple[str, weakref.ref]] = {}

        def norm_hook(m: nn.Module, inp: tuple) -> None:
            seen = outputs.get(id(inp[0]))
            if seen is not None and seen[1]() is inp[0] and m.running_var is not None:
                gamma = m.weight.detach() if m.affine else torch.ones_like(m.running_var)
                self.out_scale[seen[0]] = gamma.double().cpu() / (m.running_var.double().cpu() + m.eps).sqrt()

        def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            name = names[m]
            outputs[id(out)] = (name, weakref.ref(out))
            x = inp[0].detach()
            y = out.detach()
            if m.bias is not None:
                y = y - m.bias.view(1, -1, *([1] * (y.ndim - 2)))  # the bias is kept, not refitted
            if isinstance(m, nn.Conv2d):
                cols = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # B, C*k*k, L
                b, _, length = cols.shape
                p = min(points, length)
                pos = torch.stack([torch.randperm(length, generator=g)[:p] for _ in range(b)]).to(x.device)
                xs = cols.gather(2, pos.unsqueeze(1).expand(-1, cols.shape[1], -1)).permute(0, 2, 1).reshape(b * p, -1)
                yf = y.flatten(2)
                ys = yf.gather(2, pos.unsqueeze(1).expand(-1, yf.shape[1], -1)).permute(0, 2, 1).reshape(b * p, -1)
            else:
                xs, ys = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
            # float32 products per batch (fast BLAS), float64 sums across batches (stable)
            xtx, xty = (xs.T @ xs).double(), (xs.T @ ys).double()
            if name not in self.xtx:
                self.xtx[name], self.xty[name] = xtx, xty
            else:
                self.xtx[name] += xtx
                self.xty[name] += xty
            self.rows[name] += xs.shape[0]

        wanted = set(self.layers)
        handles = [m.register_forward_hook(hook) for m, n in names.items() if n in wanted]
        handles += [m.register_forward_pre_hook(norm_hook) for m in names
                    if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        model.eval()
        dev = next(model.parameters()).device
        try:
            for x in tqdm(batches, desc="calibration", disable=not progress, leave=False):
                model(x.to(dev))
                outputs.clear()
        finally:
            for h in handles:
                h.remove()
        self.xtx = {k: v.cpu() for k, v in self.xtx.items()}
        self.xty = {k: v.cpu() for k, v in self.xty.items()}

    def solve(self, name: str, kept: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Refit layer ``name`` reading only input channels ``kept``.

        Returns a full-size weight (same shape as ``weight``) with zeros in the dropped input
        channels, so slicing it like any other weight gives the slim layer. A grouped conv is
        refitted block by block: its block g of outputs may only read block g of the inputs,
        where ``kept`` holds an equal number (one small system per block).
        """
        info = self.graph.layers.get(name)
        groups = info.groups if info is not None and info.kind == "conv" else 1
        n_out, n_in = weight.shape[0], weight.shape[1]  # n_in: inputs per block
        kk = weight[0, 0].numel()
        per_out = n_out // groups
        full = torch.zeros(n_out, n_in, kk, dtype=weight.dtype)
        for g, kept_g in enumerate(kept.view(groups, -1)):
            cols = (kept_g.view(-1, 1) * kk + torch.arange(kk).view(1, -1)).reshape(-1)
            self._check_rows(name, len(cols))
            a = self.xtx[name].index_select(0, cols).index_select(1, cols)
            b = self.xty[name].index_select(0, cols)[:, g * per_out:(g + 1) * per_out]
            lam = self.ridge * float(a.diagonal().mean().clamp_min(1e-12))
            a = a + lam * torch.eye(len(cols), dtype=a.dtype)
            sol = torch.linalg.solve(a, b)  # (kept_g*kk, per_out)
            full[g * per_out:(g + 1) * per_out, kept_g - g * n_in] = \
                sol.T.reshape(per_out, len(kept_g), kk).to(weight.dtype)
        return full.reshape(weight.shape)

    def _check_rows(self, name: str, unknowns: int) -> None:
        """Warn, once per layer, when the refit has fewer (input, output) rows than unknowns per
        output: the least-squares system is then underdetermined, and the ridge term, not the
        data, picks the weights of the directions the rows do not reach."""
        rows = self.rows.get(name, 0)
        if rows >= unknowns or name in self.underdetermined:
            return
        self.underdetermined[name] = (rows, unknowns)
        tqdm.write(f"warning: the least-squares refit of {name} is underdetermined: {rows} calibration rows for "
                   f"{unknowns} unknowns per output (raise --calib-batches, --calib-batch-size or "
                   "--points-per-image)", file=sys.stderr)

    def residual(self, name: str, kept: torch.Tensor, weight: torch.Tensor) -> float:
        """``||X W - Y||^2`` on the calibration rows, up to the constant ``||Y||^2``, for tests."""
        info = self.graph.layers.get(name)
        groups = info.groups if info is not None and info.kind == "conv" else 1
        if groups > 1:  # as the dense (block-diagonal) conv it is
            n, c = weight.shape[0], weight.shape[1]
            dense = torch.zeros(n, c * groups, *weight.shape[2:], dtype=weight.dtype)
            rows = n // groups
            for g in range(groups):
                dense[g * rows:(g + 1) * rows, g * c:(g + 1) * c] = weight[g * rows:(g + 1) * rows]
            weight = dense
        w = weight.detach().double().reshape(weight.shape[0], -1).T  # (C*kk, n_out)
        return float((w.T @ self.xtx[name] @ w).trace() - 2 * (w * self.xty[name]).sum())

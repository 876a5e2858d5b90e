"""Data-driven channel selection: greedy elimination of the least-squares refit error
(docs/method.md#channel-selection-and-reconstruction).

Written by hand: no library ranks input channels by the error of the very refit the
reconstruction makes, from the normal equations it has already cached.

For one consumer layer the cache holds ``H = X^T X`` of the sampled input patches, and its
original weights ``T`` fit the sampled outputs exactly (``Y = X T``). Dropping the ``k x k``
rows of input channel ``c`` and refitting the others raises the squared error by
``trace(T_c^T [(H^-1)_cc]^-1 T_c)``, and the refitted weights and the inverse follow from the
same block (the Optimal Brain Surgeon step, Hassibi and Stork 1993, for a block of rows).
Each output's error is weighed by the square of the scale of the BatchNorm that reads it,
when one does (``FeatureCache.out_scale``): the network sees the normalised values, and an
output with a small variance is amplified there. (The refit is one least-squares problem per
output, so the weights change which channels go, not how the rest are refitted. In a first
test on mobilenetv2 0.5 it lifted the worst of eight random policies from 77% to 91% on the
reward set.)
Greedy: drop the cheapest channel (summed over the group's consumers), update, repeat. A
channel's score is the step at which it goes; the order is nested, so one pass, made once per
problem, serves every kept count, as the ``l1`` scores do.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from amc.graph import ChannelGroup


@dataclass
class _Block:
    """One least-squares system: a consumer (or one block of a grouped consumer)."""

    hinv: torch.Tensor  # inverse of the ridged X^T X over the alive channels' rows
    theta: torch.Tensor  # the refitted weights (rows: alive channels x kk, cols: outputs)
    chans: torch.Tensor  # the group channel of each alive input channel, in row order
    kk: int

    def costs(self) -> torch.Tensor:
        """The error added by dropping each alive channel alone, in ``chans`` order."""
        c, kk = len(self.chans), self.kk
        idx = torch.arange(c)
        hcc = self.hinv.reshape(c, kk, c, kk)[idx, :, idx, :]  # (c, kk, kk) diagonal blocks
        th = self.theta.reshape(c, kk, -1)
        return (th * torch.linalg.solve(hcc, th)).sum((1, 2))

    def drop(self, gone: torch.Tensor) -> None:
        """Drop the group channels ``gone`` that this block reads, refitting the rest."""
        hit = torch.isin(self.chans, gone)
        if not bool(hit.any()):
            return
        rows = hit.repeat_interleave(self.kk)
        r, k = rows.nonzero().squeeze(1), (~rows).nonzero().squeeze(1)
        h_kr, h_rr = self.hinv[k][:, r], self.hinv[r][:, r]
        self.theta = self.theta[k] - h_kr @ torch.linalg.solve(h_rr, self.theta[r])
        self.hinv = self.hinv[k][:, k] - h_kr @ torch.linalg.solve(h_rr, self.hinv[r][:, k])
        self.chans = self.chans[~hit]


def _blocks(model: nn.Module, group: ChannelGroup, cache, name: str, ridge: float) -> list[_Block]:
    m = model.get_submodule(name)
    w = m.weight.detach().double()
    groups = m.groups if isinstance(m, nn.Conv2d) else 1
    n_out, per_in, kk = w.shape[0], w.shape[1], w[0, 0].numel()
    per_out = n_out // groups
    # consumer input index of each group channel (permuted past a channel shuffle)
    dest = group.producer_order(name, torch.arange(group.channels))
    at = torch.empty_like(dest)
    at[dest] = torch.arange(group.channels)  # the group channel read at each consumer input
    out = []
    for g in range(groups):
        cols = (torch.arange(g * per_in, (g + 1) * per_in).view(-1, 1) * kk + torch.arange(kk)).reshape(-1)
        h = cache.xtx[name].index_select(0, cols).index_select(1, cols)
        h = h + ridge * float(h.diagonal().mean().clamp_min(1e-12)) * torch.eye(len(cols), dtype=h.dtype)
        theta = w[g * per_out:(g + 1) * per_out].reshape(per_out, -1).T.contiguous()
        if name in cache.out_scale:  # errors as the following BatchNorm passes them on
            theta = theta * cache.out_scale[name][g * per_out:(g + 1) * per_out].view(1, -1)
        out.append(_Block(torch.linalg.inv(h), theta, at[g * per_in:(g + 1) * per_in].clone(), kk))
    return out


def greedy_ls(model: nn.Module, group: ChannelGroup, cache, ridge: float = 1e-6, chunk: int = 32) -> torch.Tensor:
    """Scores for ``group``'s channels: higher is dropped later (kept longer).

    Args:
        model: the original model.
        group: the channel set.
        cache: the :class:`amc.reconstruct.FeatureCache` with the consumers' ``X^T X``.
        ridge: the Tikhonov term relative to the mean diagonal of ``X^T X``, as the refit's.
        chunk: with ``n`` channels left, the ``max(1, n // chunk)`` cheapest go in one step
            (one at a time below ``chunk`` channels; wide layers need far fewer updates).
    """
    blocks = [b for name in group.consumers for b in _blocks(model, group, cache, name, ridge)]
    alive = torch.ones(group.channels, dtype=torch.bool)
    scores = torch.zeros(group.channels, dtype=torch.float64)
    step = 0
    while bool(alive.any()):
        cost = torch.zeros(group.channels, dtype=torch.float64)
        for b in blocks:
            if len(b.chans):
                cost[b.chans] += b.costs()
        left = alive.nonzero().squeeze(1)
        take = max(1, len(left) // chunk)
        order = torch.argsort(cost[left], stable=True)[:take]
        gone = left[order]
        scores[gone] = torch.arange(step, step + take, dtype=torch.float64)
        step += take
        alive[gone] = False
        for b in blocks:
            b.drop(gone)
    return scores

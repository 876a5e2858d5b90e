"""Channel shuffle between a producer and its consumers (ShuffleNet V1; docs/method.md#channel-shuffle).

Torch-Pruning cannot map channel indices through a shuffle (view to 5-D, transpose, view
back), so :mod:`amc.graph` traces it without a map. This module finds the map by running the
model once: in a copy whose BatchNorms are identities and whose depthwise convs pass their
input through, the producer writes ``c + 1`` into its channel ``c``, and every layer of the
set reads back which producer channel reached each of its inputs. That is a fact about the
model, not an assumption about how it shuffles; a set whose map is not a channel shuffle with
``g`` groups is left alone.

A shuffled set is pruned in *cells*: channel ``p`` belongs to block ``a`` of the producer's
groups and, after the shuffle, to block ``b`` of the consumer's groups; keeping the same count
in every cell ``(a, b)`` keeps every grouped conv's blocks equal after pruning, and the slim
model's own shuffle (the same ``g``, fewer channels) then routes each kept channel to the block
of the consumer that read it before. The cells must be contiguous equal blocks of the
producer's channels, so :func:`amc.selection.top_k` can keep an equal number in each.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def shuffle_source(channels: int, groups: int) -> torch.Tensor:
    """For each channel after a shuffle of ``groups`` groups, the channel before it that lands there.

    The shuffle sends channel ``a * m + i`` (group ``a``, ``m = channels / groups``) to ``i * groups + a``.
    """
    m = channels // groups
    q = torch.arange(channels)
    return (q % groups) * m + q // groups


def shuffle_dest(channels: int, groups: int) -> torch.Tensor:
    """For each channel before a shuffle of ``groups`` groups, where it lands (the inverse of :func:`shuffle_source`)."""
    dest = torch.empty(channels, dtype=torch.long)
    dest[shuffle_source(channels, groups)] = torch.arange(channels)
    return dest


def probe_sources(model: nn.Module, input_shape: tuple[int, ...], producer: str, readers: list[str],
                  passthrough: list[str], channels: int) -> dict[str, torch.Tensor] | None:
    """For each layer in ``readers``: which channel of ``producer`` reaches each of its input channels.

    ``passthrough``: the BatchNorms and depthwise convs between them, made identities in the
    copy that is run. Returns None when some reader does not see a permutation of the
    producer's channels (an add or a mix in between).
    """
    probe = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name in passthrough:
            m = probe.get_submodule(name)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()  # mean 0, var 1
                m.eps = 0.0
                if m.affine:
                    m.weight.fill_(1.0)
                    m.bias.zero_()
            elif isinstance(m, nn.Conv2d):  # depthwise: a centred delta kernel passes the input through
                m.weight.zero_()
                m.weight[:, :, m.kernel_size[0] // 2, m.kernel_size[1] // 2] = 1.0
                if m.bias is not None:
                    m.bias.zero_()
    seen: dict[str, torch.Tensor] = {}

    def write(module: nn.Module, inp: tuple, out: torch.Tensor) -> torch.Tensor:
        code = torch.arange(1, channels + 1, dtype=out.dtype).view(1, -1, *([1] * (out.dim() - 2)))
        return code.expand_as(out).clone()

    def reader(name: str):
        def read(module: nn.Module, inp: tuple) -> None:
            x = inp[0]
            seen[name] = x[0].reshape(x.shape[1], -1)[:, 0] if x.dim() > 2 else x[0]
        return read

    handles = [probe.get_submodule(producer).register_forward_hook(write)]
    handles += [probe.get_submodule(n).register_forward_pre_hook(reader(n)) for n in readers]
    try:
        with torch.no_grad():
            probe(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    out: dict[str, torch.Tensor] = {}
    for name in readers:
        v = seen.get(name)
        if v is None or v.numel() != channels:
            return None
        src = torch.round(v.double()).long() - 1
        if not torch.allclose(v.double(), (src + 1).double(), atol=1e-3) or \
                not torch.equal(torch.sort(src).values, torch.arange(channels)):
            return None
        out[name] = src
    return out


def shuffle_groups(src: torch.Tensor) -> int | None:
    """The ``g`` with ``src == shuffle_source(len(src), g)``, or None (1 when ``src`` is the identity)."""
    c = len(src)
    for g in range(1, c + 1):
        if c % g == 0 and torch.equal(src, shuffle_source(c, g)):
            return g
    return None


def cells(channels: int, pre_groups: list[int], post_groups: list[int], groups: int) -> int | None:
    """The number of equal contiguous cells a shuffled set is pruned in, or None when the
    blocks of the grouped convs before (``pre_groups``) and after (``post_groups``) a shuffle
    of ``groups`` groups do not split the producer's channels into equal contiguous cells."""
    p = torch.arange(channels)
    q = shuffle_dest(channels, groups)  # where each channel goes
    key = torch.zeros(channels, dtype=torch.long)
    for g in pre_groups:
        key = key * g + p // (channels // g)
    for g in post_groups:
        key = key * g + q // (channels // g)
    n = len(torch.unique(key))
    if channels % n or n % groups:  # the slim shuffle needs a kept count divisible by its groups
        return None
    size = channels // n
    blocks = key.view(n, size)
    if not (blocks == blocks[:, :1]).all() or len(torch.unique(blocks[:, 0])) != n:
        return None
    return n

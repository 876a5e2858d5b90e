"""FLOPs and parameter counts.

Unit: **multiply-accumulates (MACs)** of Conv2d and Linear layers, the unit AMC's paper
reports as "FLOPs". BN, activations, pooling and additions are not counted. One MAC is two
of ``torch.utils.flop_counter``'s FLOPs; the tests check ``2 * macs == flop_counter``.
"""
from __future__ import annotations

import torch
from torch import nn


def conv_macs(cin: int, cout: int, k_h: int, k_w: int, groups: int, out_h: int, out_w: int) -> int:
    return (cin // groups) * cout * k_h * k_w * out_h * out_w


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one forward pass of ``model`` on a single input of shape ``(C, H, W)``."""
    total = 0

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += conv_macs(m.in_channels, m.out_channels, *m.kernel_size, m.groups, *out.shape[-2:])
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features * (out.numel() // out.shape[-1])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        p = next(model.parameters(), None)
        x = torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu")
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def flop_counter_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs as ``torch.utils.flop_counter`` counts them (2 per MAC), for cross-checking."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, *input_shape))
    return int(fc.get_total_flops())

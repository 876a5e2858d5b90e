"""ShuffleNet V2 (Ma et al., ECCV 2018), CIFAR-style for 28- and 32-pixel inputs.

torchvision's blocks (channel split, branch, concat, channel shuffle), with a 3x3 stride-1
stem and no max-pool, so a 28x28 image reaches the three stages at 28, 14 and 7 pixels
instead of 7, 4 and 2. ``width`` scales the stage widths of ShuffleNet V2 1x (116, 232, 464),
kept even so the channel split halves them; the last 1x1 conv keeps 1024 channels. What amc
prunes in it: each block's inner branch width, the stem and the last 1x1 (docs/method.md,
"Channel shuffle").
"""
from __future__ import annotations

from torch import nn


def _even(x: float) -> int:
    return max(4, 2 * int(round(x / 2)))


def shufflenetv2(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> nn.Module:
    from torchvision.models.shufflenetv2 import ShuffleNetV2

    stages = [_even(116 * width), _even(232 * width), _even(464 * width)]
    model = ShuffleNetV2([4, 8, 4], [24, *stages, 1024], num_classes=num_classes)
    model.conv1[0] = nn.Conv2d(in_channels, 24, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model

"""ShuffleNet V2 (Ma et al., ECCV 2018) and V1 (Zhang et al., CVPR 2018), CIFAR-style for 28- and 32-pixel inputs.

torchvision's blocks (channel split, branch, concat, channel shuffle), with a 3x3 stride-1
stem and no max-pool, so a 28x28 image reaches the three stages at 28, 14 and 7 pixels
instead of 7, 4 and 2. ``width`` scales the stage widths of ShuffleNet V2 1x (116, 232, 464),
kept even so the channel split halves them; the last 1x1 conv keeps 1024 channels. What amc
prunes in it: each block's inner branch width, the stem and the last 1x1 (docs/method.md,
"Channel shuffle").
"""
from __future__ import annotations

import torch
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


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g * m, H, W) -> the m channels of each group interleaved: channel a * m + i goes to i * g + a."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet V1's unit: grouped 1x1, channel shuffle, depthwise 3x3, grouped 1x1.

    Stride 1 adds the input; stride 2 concatenates a 3x3 average-pooled input, so the branch
    makes ``out - in`` channels. The first unit of the network has an ungrouped first 1x1
    (its input has only the stem's 24 channels), as in the paper.
    """

    def __init__(self, cin: int, cout: int, mid: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        self.stride, self.groups = stride, first_groups
        branch = cout - cin if stride == 2 else cout
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.groups)
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        if self.pool is not None:
            return self.relu(torch.cat([self.pool(x), out], 1))
        return self.relu(out + x)


class ShuffleNetV1(nn.Module):
    def __init__(self, stages: list[int], mids: list[int], repeats: list[int], groups: int, in_channels: int,
                 num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 24, 3, 1, 1, bias=False), nn.BatchNorm2d(24),
                                  nn.ReLU(inplace=True))
        units, cin = [], 24
        for s, (cout, mid, n) in enumerate(zip(stages, mids, repeats)):
            for i in range(n):
                first_groups = 1 if s == 0 and i == 0 else groups
                units.append(ShuffleUnit(cin, cout, mid, 2 if i == 0 else 1, groups, first_groups))
                cin = cout
        self.units = nn.Sequential(*units)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.units(self.stem(x))), 1))


def shufflenetv1(in_channels: int = 3, num_classes: int = 10, width: float = 1.0, groups: int = 3) -> nn.Module:
    """ShuffleNet V1 (Zhang et al., CVPR 2018), groups 3, CIFAR-style for 28- and 32-pixel inputs.

    The paper's 1x widths for 3 groups (240, 480, 960; 4, 8 and 4 units) times ``width``,
    with a 3x3 stride-1 stem of 24 channels and no max-pool. Each unit's bottleneck is about
    a quarter of its output, rounded to a multiple of groups^2, so that its channel shuffle
    splits it into equal cells and amc can prune it consistently (docs/method.md, "Channel
    shuffle").
    """
    g2 = groups * groups
    stages = [groups * max(4, int(round(c * width / groups))) for c in (240, 480, 960)]
    mids = [g2 * max(1, int(round(c / 4 / g2))) for c in stages]
    return ShuffleNetV1(stages, mids, [4, 8, 4], groups, in_channels, num_classes)

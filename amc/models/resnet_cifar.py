"""CIFAR-style ResNets (He et al., 2016, §4.2) and their plain counterparts.

``plain20`` is the network of the AMC paper's CIFAR-10 experiment: ResNet-20 with the
shortcuts removed. Three stages of 16/32/64 channels (times ``width``), each with ``n``
basic blocks of two 3x3 convs; stride 2 opens stages two and three.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; with ``residual`` the input is added before the last ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.residual = residual
        self.shortcut: nn.Module | None = None
        if residual and (stride != 1 or cin != cout):
            # Option B of the ResNet paper: a projection keeps the graph exportable and prunable.
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(out)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, residual: bool, in_channels: int = 3, num_classes: int = 10,
                 width: float = 1.0) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = [_ch(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        cin = widths[0]
        for stage, cout in enumerate(widths):
            blocks = []
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(cin, cout, stride, residual))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def plain20(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    return CifarResNet(20, False, in_channels, num_classes, width)


def resnet20(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    return CifarResNet(20, True, in_channels, num_classes, width)


def resnet56(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    return CifarResNet(56, True, in_channels, num_classes, width)

"""CIFAR-style VGG-16 with batch norm (Simonyan & Zisserman, 2015; BN as in Liu et al., 2017).

Four max-pools instead of five, then global average pooling, so that 28x28 input works.
"""
from __future__ import annotations

import torch
from torch import nn

_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class VGG(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                cout = max(1, int(round(int(v) * width)))
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def vgg16(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> VGG:
    return VGG(in_channels, num_classes, width)

"""MobileNet V1 (Howard et al., 2017) and V2 (Sandler et al., 2018), CIFAR-style.

The stem has stride 1 and the early stages fewer strides than the ImageNet versions, so
that 28x28 and 32x32 inputs still end at a 2x2 to 4x4 map.
"""
from __future__ import annotations

import torch
from torch import nn


def _ch(c: int, width: float, divisor: int = 1) -> int:
    v = max(divisor, int(c * width + divisor / 2) // divisor * divisor)
    return v


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act(inplace=True))


class MobileNetV1(nn.Module):
    # (output channels, stride) of each depthwise-separable block
    _CFG = [(64, 1), (128, 1), (128, 1), (256, 2), (256, 1), (512, 2),
            (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        cin = _ch(32, width)
        layers: list[nn.Module] = [_conv_bn(in_channels, cin, 3, 1)]
        for c, s in self._CFG:
            cout = _ch(c, width)
            layers += [_conv_bn(cin, cin, 3, s, groups=cin), _conv_bn(cin, cout, 1, 1)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1, 1, act=nn.ReLU6))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res else out


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, first stride s): ImageNet strides but a stride-1 stem,
    # so a 28x28 or 32x32 input ends at 2x2
    _CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
            (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        cin = _ch(32, width, 8)
        layers: list[nn.Module] = [_conv_bn(in_channels, cin, 3, 1, act=nn.ReLU6)]
        for t, c, n, s in self._CFG:
            cout = _ch(c, width, 8)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = _ch(1280, max(1.0, width), 8)
        layers.append(_conv_bn(cin, last, 1, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> MobileNetV1:
    return MobileNetV1(in_channels, num_classes, width)


def mobilenetv2(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> MobileNetV2:
    return MobileNetV2(in_channels, num_classes, width)

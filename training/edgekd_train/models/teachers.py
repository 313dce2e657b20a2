"""Wide ResNet teachers (Zagoruyko & Komodakis), WRN-16-k: depth 16 -> 2 blocks per group.

"wrn16-4" (~2.7M params) is the Fashion-MNIST teacher of design.md section 4; "wrn16-1" is a
tiny variant for tests. Pre-activation basic blocks, no dropout.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register_model


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.short is None else self.short(o))


class WideResNet(nn.Module):
    def __init__(self, depth: int, width: int, num_classes: int, in_chans: int):
        super().__init__()
        assert (depth - 4) % 6 == 0, "WRN depth must be 6n+4"
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        blocks = []
        c = widths[0]
        for g, stride in enumerate((1, 2, 2)):
            for i in range(n):
                blocks.append(_Block(c, widths[g + 1], stride if i == 0 else 1))
                c = widths[g + 1]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)
        self.num_features = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_pooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global-average-pooled last feature map (B, num_features), logits)."""
        x = F.relu(self.bn(self.blocks(self.conv(x))))
        f = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return f, self.fc(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_pooled(x)[1]


@register_model("wrn16-4")
def wrn16_4(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    return WideResNet(16, 4, num_classes, in_chans)


@register_model("wrn16-2")
def wrn16_2(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    return WideResNet(16, 2, num_classes, in_chans)


@register_model("wrn16-1")
def wrn16_1(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    return WideResNet(16, 1, num_classes, in_chans)

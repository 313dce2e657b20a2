"""Student CNNs: plain conv3x3 + BN + ReLU stacks, global average pool, linear head.

Only ops every edge engine handles (Conv, Relu, GlobalAveragePool, Gemm after BN folding at
export), and nothing training-only: the exported graph is exactly this module in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import register_model


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class PlainCNN(nn.Module):
    """conv blocks given as (out_channels, stride) pairs, then GAP and a linear classifier."""

    def __init__(self, plan: list[tuple[int, int]], num_classes: int, in_chans: int):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for cout, stride in plan:
            layers += _block(c, cout, stride)
            c = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self.num_features = c

    def forward_pooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled features (B, num_features), logits): for methods that distil features."""
        f = torch.flatten(self.pool(self.features(x)), 1)
        return f, self.fc(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_pooled(x)[1]


@register_model("cnn-18k")
def cnn_18k(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    # 4 convs, ~18k params at 1 in-channel / 10 classes (the design's 18k student).
    return PlainCNN([(16, 1), (24, 2), (28, 1), (32, 2)], num_classes, in_chans)


@register_model("cnn-70k")
def cnn_70k(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    # The design's 5-conv ~70k student.
    return PlainCNN([(16, 1), (32, 2), (48, 1), (52, 2), (64, 1)], num_classes, in_chans)

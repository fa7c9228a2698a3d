"""Residual convolutional encoders at 1/8 resolution (RAFT's feature and context nets).

Layout: a 7x7 stride-2 stem, then three stages of two residual blocks each with strides
1, 2, 2, then a 1x1 projection: (B, 3, H, W) -> (B, out, H/8, W/8). The feature encoder
uses instance norm (matching features should not depend on batch statistics); the context
encoder uses batch norm in RAFT-large or none.
"""
from __future__ import annotations

import torch
from torch import nn


def make_norm(kind: str, channels: int) -> nn.Module:
    """A 2-D normalisation layer by name: instance | batch | group | none."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels)          # no affine, as RAFT
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(max(channels // 8, 1), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class ResidualBlock(nn.Module):
    """Two 3x3 convs with a skip; (B, cin, H, W) -> (B, cout, H/stride, W/stride)."""

    def __init__(self, cin: int, cout: int, norm: str, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.norm1 = make_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm2 = make_norm(norm, cout)
        self.relu = nn.ReLU(inplace=True)
        if stride == 1 and cin == cout:
            self.skip = nn.Identity()
        else:  # project the skip path to the new width / resolution
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), make_norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        return self.relu(self.skip(x) + y)


class Encoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, out_dim, H/8, W/8); H, W multiples of 8."""

    def __init__(self, out_dim: int, dims: tuple[int, ...], norm: str):
        super().__init__()
        d1, d2, d3 = dims
        self.stem = nn.Sequential(nn.Conv2d(3, d1, 7, stride=2, padding=3), make_norm(norm, d1),
                                  nn.ReLU(inplace=True))                          # 1/2
        self.stage1 = nn.Sequential(ResidualBlock(d1, d1, norm), ResidualBlock(d1, d1, norm))  # 1/2
        self.stage2 = nn.Sequential(ResidualBlock(d1, d2, norm, 2), ResidualBlock(d2, d2, norm))  # 1/4
        self.stage3 = nn.Sequential(ResidualBlock(d2, d3, norm, 2), ResidualBlock(d3, d3, norm))  # 1/8
        self.proj = nn.Conv2d(d3, out_dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.proj(x)

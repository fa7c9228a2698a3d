"""The recurrent update operator: motion encoder, (GMA aggregation), ConvGRU, heads.

One step (RAFT Sec. 3.3): encode the looked-up correlations and the current flow into
motion features; with GMA also aggregate them globally; feed [context, motion(, global
motion)] to a separable ConvGRU; predict a flow residual and the convex-upsampling mask
from the new hidden state.
"""
from __future__ import annotations

import torch
from torch import nn

from models.flow.attention import MotionAggregator
from models.flow.config import FlowConfig


class MotionEncoder(nn.Module):
    """(corr (B, Ccorr, h, w), flow (B, 2, h, w)) -> motion features (B, motion_dim, h, w).

    The last 2 channels are the raw flow, so the GRU always sees the current estimate.
    """

    def __init__(self, corr_channels: int, corr_dims: tuple[int, ...], flow_dims: tuple[int, ...],
                 motion_dim: int):
        super().__init__()
        c1, c2 = corr_dims
        f1, f2 = flow_dims
        self.corr1 = nn.Conv2d(corr_channels, c1, 1)
        self.corr2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.flow1 = nn.Conv2d(2, f1, 7, padding=3)
        self.flow2 = nn.Conv2d(f1, f2, 3, padding=1)
        self.fuse = nn.Conv2d(c2 + f2, motion_dim - 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, corr: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        c = self.relu(self.corr2(self.relu(self.corr1(corr))))
        f = self.relu(self.flow2(self.relu(self.flow1(flow))))
        m = self.relu(self.fuse(torch.cat([c, f], dim=1)))
        return torch.cat([m, flow], dim=1)


class SepConvGRU(nn.Module):
    """ConvGRU applied twice, with 1x5 then 5x1 kernels (RAFT-large's large receptive field).

    (h (B, hidden, h, w), x (B, input, h, w)) -> new h (B, hidden, h, w).
    """

    def __init__(self, hidden_dim: int, input_dim: int):
        super().__init__()
        cin = hidden_dim + input_dim
        self.gates = nn.ModuleList()
        for kernel, pad in (((1, 5), (0, 2)), ((5, 1), (2, 0))):
            self.gates.append(nn.ModuleDict({
                "z": nn.Conv2d(cin, hidden_dim, kernel, padding=pad),
                "r": nn.Conv2d(cin, hidden_dim, kernel, padding=pad),
                "q": nn.Conv2d(cin, hidden_dim, kernel, padding=pad),
            }))

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for g in self.gates:
            hx = torch.cat([h, x], dim=1)
            z = torch.sigmoid(g["z"](hx))               # update gate
            r = torch.sigmoid(g["r"](hx))               # reset gate
            q = torch.tanh(g["q"](torch.cat([r * h, x], dim=1)))  # candidate state
            h = (1 - z) * h + z * q
        return h


class FlowHead(nn.Module):
    """(B, hidden, h, w) -> (B, out, h, w) through one 3x3 hidden layer."""

    def __init__(self, hidden_dim: int, mid_dim: int, out_dim: int, last_kernel: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(hidden_dim, mid_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(mid_dim, out_dim, last_kernel, padding=last_kernel // 2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x)))


class UpdateBlock(nn.Module):
    """One refinement step; `attn` (B, heads, hw, hw) is required iff aggregation == "gma".

    forward(net, inp, corr, flow, attn) -> (net (B, hidden, h, w), mask (B, 64*9, h, w),
    delta_flow (B, 2, h, w)).
    """

    def __init__(self, cfg: FlowConfig, corr_channels: int):
        super().__init__()
        self.mask_scale = cfg.mask_scale
        self.motion = MotionEncoder(corr_channels, cfg.motion_corr_dims, cfg.motion_flow_dims, cfg.motion_dim)
        gru_input = cfg.context_dim + cfg.motion_dim
        if cfg.aggregation == "gma":
            self.aggregator = MotionAggregator(cfg.motion_dim, cfg.gma_heads, cfg.gma_head_dim)
            gru_input += cfg.motion_dim  # GMA: [context, motion, global motion]
        else:
            self.aggregator = None
        self.gru = SepConvGRU(cfg.hidden_dim, gru_input)
        self.flow_head = FlowHead(cfg.hidden_dim, cfg.flow_head_dim, 2)
        self.mask_head = FlowHead(cfg.hidden_dim, cfg.mask_head_dim, 64 * 9, last_kernel=1)

    def forward(self, net, inp, corr, flow, attn=None):
        motion = self.motion(corr, flow)
        parts = [inp, motion]
        if self.aggregator is not None:
            if attn is None:
                raise ValueError("UpdateBlock with GMA aggregation needs the attention matrix `attn`")
            parts.append(self.aggregator(attn, motion))
        net = self.gru(net, torch.cat(parts, dim=1))
        return net, self.mask_scale * self.mask_head(net), self.flow_head(net)

"""`FlowNet`: RAFT, GMA and DRFA as one code path (switches in `FlowConfig`).

Pipeline for a pair (B, 3, H, W) in [0, 1]:
1. normalise to [-1, 1], replicate-pad to multiples of 8 (centred);
2. feature encoder on both frames -> all-pairs correlation pyramid (1/8);
3. context encoder on frame 1 -> GRU state (tanh) and context features f_ctx (relu);
4. [gma/drfa] attention over f_ctx, computed once; [drfa] C = sigmoid(Phi(f_ctx)) biases it;
5. `iters` GRU steps refine the 1/8 flow; each is convex-upsampled x8 and cropped back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.flow import upsample as up
from models.flow.attention import ConfidenceHead, GlobalAttention
from models.flow.config import FlowConfig
from models.flow.corr import CorrPyramid
from models.flow.encoder import Encoder
from models.flow.update import UpdateBlock
from models.flow.warp import pixel_grid


@dataclass
class FlowOutput:
    """What `FlowNet.forward` returns.

    flows: one (B, 2, H, W) flow per iteration (pixels, x first); the last is the estimate.
    confidence: DRFA's C (B, 1, ceil(H/8), ceil(W/8)) on the padded 1/8 grid; None for raft/gma.
    flow_low: final (B, 2, h, w) flow on the padded 1/8 grid (1/8 px units), for warm starts.
    pad: (left, right, top, bottom) replicate padding applied to the input.
    """

    flows: list[torch.Tensor]
    confidence: torch.Tensor | None
    flow_low: torch.Tensor
    pad: tuple[int, int, int, int]

    @property
    def flow(self) -> torch.Tensor:
        return self.flows[-1]

    def upsampled_confidence(self) -> torch.Tensor | None:
        """C bilinearly upsampled x8 and cropped to the input size, (B, 1, H, W); None if no C."""
        if self.confidence is None:
            return None
        return up.upsample_confidence(self.confidence, self.pad)


class FlowNet(nn.Module):
    """RAFT-family flow network; `config.variant` is 'raft', 'gma' or 'drfa'."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = config
        c = config
        self.feature_encoder = Encoder(c.feature_dim, c.encoder_dims, c.feature_norm)
        self.context_encoder = Encoder(c.hidden_dim + c.context_dim, c.encoder_dims, c.context_norm)
        corr_channels = c.corr_levels * (2 * c.corr_radius + 1) ** 2
        self.update = UpdateBlock(c, corr_channels)
        self.attention = (GlobalAttention(c.context_dim, c.gma_heads, c.gma_head_dim, c.position_bias,
                                          c.max_relative_distance, c.confidence_eps)
                          if c.aggregation == "gma" else None)
        self.confidence = (ConfidenceHead(c.context_dim, c.confidence_dim, c.confidence_init)
                           if c.confidence_bias else None)

    def freeze_batchnorm(self) -> FlowNet:
        """Put BatchNorm layers in eval mode (RAFT does this after its first training stage)."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def _check(self, img1: torch.Tensor, img2: torch.Tensor) -> None:
        for name, img in (("img1", img1), ("img2", img2)):
            if not torch.is_tensor(img) or img.ndim != 4 or img.shape[1] != 3:
                shape = tuple(img.shape) if torch.is_tensor(img) else type(img).__name__
                raise ValueError(f"FlowNet: {name} must be a (B, 3, H, W) tensor, got {shape}")
            if not img.is_floating_point():
                raise ValueError(f"FlowNet: {name} must be float in [0, 1], got {img.dtype}")
        if img1.shape != img2.shape:
            raise ValueError(f"FlowNet: img1 {tuple(img1.shape)} and img2 {tuple(img2.shape)} differ")

    def _initial_flow(self, flow_init: torch.Tensor, amounts, full_hw, low_hw) -> torch.Tensor:
        """flow_init at input size (B, 2, H, W) in px, or on the 1/8 grid (B, 2, h, w) in 1/8 px."""
        if flow_init.ndim == 4 and flow_init.shape[1] == 2 and tuple(flow_init.shape[-2:]) == low_hw:
            return flow_init
        if flow_init.ndim == 4 and flow_init.shape[1] == 2 and tuple(flow_init.shape[-2:]) == full_hw:
            return nn.functional.avg_pool2d(up.pad(flow_init, amounts), up.FACTOR) / up.FACTOR
        raise ValueError(f"FlowNet: flow_init must be (B, 2, {full_hw[0]}, {full_hw[1]}) or "
                         f"(B, 2, {low_hw[0]}, {low_hw[1]}), got {tuple(flow_init.shape)}")

    def forward(self, img1: torch.Tensor, img2: torch.Tensor, iters: int | None = None,
                flow_init: torch.Tensor | None = None, *, final_only: bool = False) -> FlowOutput:
        """Flow from img1 to img2. `final_only` upsamples only the last iteration (inference)."""
        self._check(img1, img2)
        cfg = self.config
        iters = iters if iters is not None else (cfg.train_iters if self.training else cfg.test_iters)
        if iters < 1:
            raise ValueError(f"FlowNet: iters must be >= 1, got {iters}")
        b, _, height, width = img1.shape
        amounts = up.pad_amounts(height, width)
        x1 = up.pad(2 * img1 - 1, amounts)                        # (B, 3, H8, W8) in [-1, 1]
        x2 = up.pad(2 * img2 - 1, amounts)
        if min(x1.shape[-2:]) < cfg.min_size:
            raise ValueError(f"FlowNet: images {height}x{width} are too small for {cfg.corr_levels} "
                             f"correlation levels; both sides must be >= {cfg.min_size} px")

        fmap1, fmap2 = self.feature_encoder(torch.cat([x1, x2])).float().chunk(2)  # (B, D, h, w) each
        corr = CorrPyramid(fmap1, fmap2, cfg.corr_levels, cfg.corr_radius)
        net, inp = self.context_encoder(x1).split([cfg.hidden_dim, cfg.context_dim], dim=1)
        net, inp = torch.tanh(net), torch.relu(inp)               # (B, hidden, h, w), (B, ctx, h, w)

        confidence = self.confidence(inp) if self.confidence is not None else None  # (B, 1, h, w)
        attn = self.attention(inp, confidence) if self.attention is not None else None  # (B, H, hw, hw)

        h, w = fmap1.shape[-2:]
        coords0 = pixel_grid(b, h, w, img1.device, fmap1.dtype)  # (B, 2, h, w)
        coords1 = coords0.clone()
        if flow_init is not None:
            coords1 = coords1 + self._initial_flow(flow_init.to(coords1), amounts, (height, width), (h, w))

        # Correlation, coordinates and flows stay float32 (a bf16 coordinate steps 0.125 px at
        # 20 px); the update block's inputs take its weights' dtype (bf16 under DeepSpeed on a GPU).
        wdtype = next(self.update.parameters()).dtype
        flows = []
        for it in range(iters):
            coords1 = coords1.detach()                            # RAFT: no gradient through lookups
            corr_feat = corr.lookup(coords1)                      # (B, L*(2r+1)^2, h, w)
            flow_low = coords1 - coords0
            net, mask, delta = self.update(net, inp, corr_feat.to(wdtype), flow_low.to(wdtype), attn)
            mask = mask.float()
            coords1 = coords1 + delta.float()
            if not final_only or it == iters - 1:
                flow_up = up.convex_upsample(coords1 - coords0, mask)  # (B, 2, H8, W8)
                flows.append(up.crop(flow_up, amounts))
        return FlowOutput(flows=flows, confidence=confidence, flow_low=coords1 - coords0, pad=amounts)

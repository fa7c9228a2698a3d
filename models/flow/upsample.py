"""Padding to the 1/8 grid and RAFT's convex upsampling of the 1/8 flow."""
from __future__ import annotations

import torch
import torch.nn.functional as F

FACTOR = 8  # the encoders' downsampling factor


def pad_amounts(height: int, width: int, multiple: int = FACTOR) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) replicate padding that centres the image on the grid."""
    ph, pw = -height % multiple, -width % multiple
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def pad(x: torch.Tensor, amounts: tuple[int, int, int, int]) -> torch.Tensor:
    return F.pad(x, amounts, mode="replicate") if any(amounts) else x


def crop(x: torch.Tensor, amounts: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo `pad` on a full-resolution (B, C, H+ph, W+pw) tensor."""
    left, right, top, bottom = amounts
    h, w = x.shape[-2:]
    return x[..., top:h - bottom, left:w - right]


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 2, h, w) flow at 1/8 and (B, 9*64, h, w) mask logits -> (B, 2, 8h, 8w) flow.

    Every full-resolution pixel is a convex combination (softmax over the 9 logits) of the
    3x3 coarse neighbours of its coarse cell; flow values are scaled by 8 to full-res px.
    """
    b, _, h, w = flow.shape
    f = FACTOR
    weights = mask.reshape(b, 1, 9, f, f, h, w).softmax(dim=2)
    neigh = F.unfold(f * flow, kernel_size=3, padding=1).reshape(b, 2, 9, 1, 1, h, w)
    up = (weights * neigh).sum(dim=2)                    # (B, 2, 8, 8, h, w): [sub-y, sub-x]
    return up.permute(0, 1, 4, 2, 5, 3).reshape(b, 2, f * h, f * w)


def upsample_confidence(conf: torch.Tensor, amounts: tuple[int, int, int, int]) -> torch.Tensor:
    """(B, 1, h, w) confidence on the padded 1/8 grid -> (B, 1, H, W) at input size."""
    up = F.interpolate(conf, scale_factor=FACTOR, mode="bilinear", align_corners=False)
    return crop(up, amounts)

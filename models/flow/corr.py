"""All-pairs correlation volume with a pooled pyramid and a windowed lookup (RAFT Sec. 3.2).

The volume holds the dot product of every frame-1 feature with every frame-2 feature,
scaled by 1/sqrt(D). Level k average-pools the frame-2 dimensions by 2^k, so one volume
covers small and large displacements. Each refinement step reads, for every frame-1
cell, a (2r+1)^2 window of every level centred on where the current flow points.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class CorrPyramid:
    """Built once per image pair; `lookup(coords)` once per iteration."""

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, levels: int, radius: int):
        # fmap1, fmap2: (B, D, h, w)
        b, d, h, w = fmap1.shape
        self.levels, self.radius = levels, radius
        self.batch, self.height, self.width = b, h, w
        corr = torch.einsum("bdi,bdj->bij", fmap1.flatten(2), fmap2.flatten(2)) / d**0.5  # (B, hw, hw)
        corr = corr.reshape(b * h * w, 1, h, w)  # one frame-2 "image" per frame-1 cell
        self.pyramid = [corr]
        for _ in range(levels - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)  # (B*h*w, 1, h/2^k, w/2^k)
            self.pyramid.append(corr)
        r = torch.arange(-radius, radius + 1, device=fmap1.device, dtype=fmap1.dtype)
        dy, dx = torch.meshgrid(r, r, indexing="ij")
        self.offsets = torch.stack([dx, dy], dim=-1).reshape(1, 2 * radius + 1, 2 * radius + 1, 2)

    @property
    def channels(self) -> int:
        return self.levels * (2 * self.radius + 1) ** 2

    def lookup(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (B, 2, h, w): frame-2 positions at level 0 (x first) -> (B, L*(2r+1)^2, h, w)."""
        b, h, w = self.batch, self.height, self.width
        centres = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        out = []
        for k, corr in enumerate(self.pyramid):
            pts = centres / 2**k + self.offsets                       # (B*h*w, 2r+1, 2r+1, 2)
            out.append(_bilinear(corr, pts).reshape(b, h, w, -1))  # zeros outside the level
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


def _bilinear(image: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Sample image (N, 1, H, W) at pixel positions pts (N, h', w', 2) -> (N, h'*w').

    align_corners=False with pixel centres at (x + 0.5) / W: exact for any level size,
    including 1x1 levels, and zero outside the level.
    """
    hl, wl = image.shape[-2:]
    gx = (2 * pts[..., 0] + 1) / wl - 1
    gy = (2 * pts[..., 1] + 1) / hl - 1
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False).flatten(1)

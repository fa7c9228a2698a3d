"""Warping utilities shared by flow training, evaluation and the upscaler.

Conventions: images are float `(B, C, H, W)`; flow is `(B, 2, H, W)` in pixels with
channel 0 = horizontal displacement (x) and channel 1 = vertical (y). A flow `f` from
frame 1 to frame 2 says pixel `p` of frame 1 is seen at `p + f(p)` in frame 2.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def pixel_grid(batch: int, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(B, 2, H, W) pixel coordinates, x first."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([xs, ys]).unsqueeze(0).expand(batch, 2, height, width)


def sample_at(image: torch.Tensor, coords: torch.Tensor, padding_mode: str = "border",
              mode: str = "bilinear") -> torch.Tensor:
    """Sample `image` (B, C, H, W) at pixel coordinates `coords` (B, 2, H', W')."""
    _, _, h, w = image.shape
    # align_corners=True: pixel centres sit at -1 and +1 exactly.
    gx = 2.0 * coords[:, 0] / max(w - 1, 1) - 1.0
    gy = 2.0 * coords[:, 1] / max(h - 1, 1) - 1.0
    grid = torch.stack([gx, gy], dim=-1).to(image.dtype)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def backward_warp(image: torch.Tensor, flow: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Warp `image` (frame 2) back to frame 1 with the frame-1 -> frame-2 `flow`.

    out(p) = image(p + flow(p)). `padding_mode` is grid_sample's: "border" repeats the
    edge (what the upscaler wants), "zeros" blacks out what leaves the frame.
    """
    if image.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and flow {tuple(flow.shape)} differ in size")
    b, _, h, w = flow.shape
    coords = pixel_grid(b, h, w, flow.device, flow.dtype) + flow
    return sample_at(image, coords, padding_mode=padding_mode)


def out_of_frame(flow: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) bool: True where p + flow(p) leaves the frame."""
    b, _, h, w = flow.shape
    coords = pixel_grid(b, h, w, flow.device, flow.dtype) + flow
    x, y = coords[:, 0:1], coords[:, 1:2]
    return (x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)


def forward_backward_occlusion(flow_fw: torch.Tensor, flow_bw: torch.Tensor,
                               alpha: float = 0.01, beta: float = 0.5) -> torch.Tensor:
    """(B, 1, H, W) bool occlusion mask of frame 1 from the forward-backward check.

    A point is occluded when the backward flow at its forward target does not bring it
    back: |f + b(p + f)|^2 > alpha (|f|^2 + |b(p + f)|^2) + beta (Sundaram et al. 2010,
    the thresholds UnFlow uses). Points leaving the frame count as occluded.
    """
    bw_at_target = backward_warp(flow_bw, flow_fw)
    diff = (flow_fw + bw_at_target).pow(2).sum(1, keepdim=True)
    mag = flow_fw.pow(2).sum(1, keepdim=True) + bw_at_target.pow(2).sum(1, keepdim=True)
    return (diff > alpha * mag + beta) | out_of_frame(flow_fw)


def _colour_wheel() -> np.ndarray:
    """The Middlebury colour wheel (Baker et al. 2011): (55, 3) RGB in [0, 255]."""
    segments = [(15, (255, 0, 0), (255, 255, 0)), (6, (255, 255, 0), (0, 255, 0)),
                (4, (0, 255, 0), (0, 255, 255)), (11, (0, 255, 255), (0, 0, 255)),
                (13, (0, 0, 255), (255, 0, 255)), (6, (255, 0, 255), (255, 0, 0))]
    rows = []
    for n, start, end in segments:
        t = np.arange(n)[:, None] / n
        rows.append((1 - t) * np.array(start) + t * np.array(end))
    return np.concatenate(rows)


def flow_to_color(flow: torch.Tensor | np.ndarray, max_flow: float | None = None) -> np.ndarray:
    """Colour-code one flow field (2, H, W) as an (H, W, 3) uint8 image.

    Hue is direction, saturation is magnitude normalised by `max_flow` (default: the
    largest magnitude in the field), white is zero motion.
    """
    f = flow.detach().float().cpu().numpy() if torch.is_tensor(flow) else np.asarray(flow, np.float32)
    if f.ndim != 3 or f.shape[0] != 2:
        raise ValueError(f"flow_to_color expects (2, H, W), got {f.shape}")
    u, v = f[0], f[1]
    mag = np.sqrt(u**2 + v**2)
    scale = max_flow if max_flow is not None else max(float(mag.max()), 1e-6)
    rad = np.clip(mag / scale, 0, 1)
    wheel = _colour_wheel()
    n = len(wheel)
    angle = np.arctan2(-v, -u) / math.pi  # in [-1, 1]
    pos = (angle + 1) / 2 * (n - 1)
    k0 = np.floor(pos).astype(int)
    k1 = (k0 + 1) % n
    t = (pos - k0)[..., None]
    colour = ((1 - t) * wheel[k0] + t * wheel[k1]) / 255.0
    colour = 1 - rad[..., None] * (1 - colour)
    return (colour * 255).round().astype(np.uint8)

"""Overlapping tiles and their blend weights (per axis), and a tiled map of an image function.

Spans: an axis longer than `TileConfig.tile` is cut into tiles of `tile` px (the last one up
to `align - 1` px longer) that overlap by at least `overlap` px, with starts at multiples of
`align`. Weights (per axis, multiplied): 1 inside the tile, 0 on the `margin` px at an edge
shared with a neighbour (where the function sees a cut-off context), and a raised-cosine
ramp between (`0.5 - 0.5 cos(pi t)`). Where two tiles overlap by exactly `overlap`, the two
ramps sum to 1: a smooth cross-fade with no visible edge. A frame border is never a tile
edge: there the weight stays 1. Any set of positive weights, normalised by their sum, gives
a weighted average of the tiles.

Used by `pipelines.restore.tiling` (frames restored tile by tile) and by the upscaler's VAE
decode of large frames (`tiled_map`).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable

import torch


@dataclasses.dataclass(frozen=True)
class TileConfig:
    tile: int = 256     # LR px, tile side; a frame side above this is tiled (0 = never tile)
    overlap: int = 32   # LR px, least overlap of neighbouring tiles (> 2 * margin)
    margin: int = 4     # LR px at a shared tile edge given zero weight (edge effects of the model)
    align: int = 8      # LR px, tile starts are multiples of this (the UNet's total downsampling)
    halo: int = 0       # LR px of context around a tile for its flow and previous-frame warp (0 = none)

    def __post_init__(self):
        if self.tile < 0 or self.margin < 0 or self.align < 1 or self.halo < 0:
            raise ValueError(f"tile, margin must be >= 0 and align >= 1, got {self}")
        if self.tile and self.overlap <= 2 * self.margin:
            raise ValueError(f"overlap ({self.overlap}) must exceed 2 * margin ({2 * self.margin})")
        if self.tile and self.tile <= self.overlap + self.align:
            raise ValueError(f"tile ({self.tile}) must exceed overlap + align ({self.overlap + self.align})")


def tile_spans(length: int, cfg: TileConfig) -> list[tuple[int, int]]:
    """[(start, end)] LR spans covering [0, length): aligned starts, overlaps >= cfg.overlap."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if not cfg.tile or length <= cfg.tile:
        return [(0, length)]
    # The fewest tiles whose evenly spread, `align`-floored starts keep every overlap at
    # least `overlap` (flooring can widen a gap by up to align - 1, hence the search).
    n = math.ceil((length - cfg.tile) / (cfg.tile - cfg.overlap)) + 1
    while True:
        starts = [(i * (length - cfg.tile) // (n - 1)) // cfg.align * cfg.align for i in range(n)]
        if all(b - a <= cfg.tile - cfg.overlap for a, b in itertools.pairwise(starts)):
            break
        n += 1
    starts = sorted(set(starts))          # flooring can merge the last two starts (short frames)
    return [(s, s + cfg.tile) for s in starts[:-1]] + [(starts[-1], length)]


def _ramp(distance: torch.Tensor, margin: float, width: float) -> torch.Tensor:
    """Raised cosine of the distance (px) to a shared edge: 0 below margin, 1 past margin+width."""
    t = ((distance - margin) / width).clamp(0, 1)
    return 0.5 - 0.5 * torch.cos(math.pi * t)


def axis_weights(span: tuple[int, int], length: int, cfg: TileConfig, scale: int) -> torch.Tensor:
    """(scale * (end - start),) float64 HR weights of one tile along one axis."""
    start, end = span
    n = (end - start) * scale
    centres = torch.arange(n, dtype=torch.float64) + 0.5           # HR pixel centres in the tile
    margin, width = cfg.margin * scale, (cfg.overlap - 2 * cfg.margin) * scale
    w = torch.ones(n, dtype=torch.float64)
    if start > 0:                                                   # a neighbour on this side
        w = w * _ramp(centres, margin, width)
    if end < length:
        w = w * _ramp(n - centres, margin, width)
    return w


def tiled_map(fn: Callable[[torch.Tensor, tuple[int, int, int, int]], torch.Tensor], x: torch.Tensor,
              cfg: TileConfig, scale: int, accumulate_device: torch.device | str | None = None) -> torch.Tensor:
    """`fn(crop, (y0, y1, x0, x1))` ((B, C, h', w') -> (B, C', s*h', s*w')) applied to the
    overlapping tiles of x (B, C, h, w) and blended: (B, C', s*h, s*w) float32, accumulated on
    `accumulate_device` (default: where `fn`'s output is). Only one tile's output is alive at a
    time besides the accumulators."""
    h, w = x.shape[-2:]
    ys, xs = tile_spans(h, cfg), tile_spans(w, cfg)
    wx = [axis_weights(span, w, cfg, scale) for span in xs]
    acc = wsum = None
    for y0, y1 in ys:
        wy = axis_weights((y0, y1), h, cfg, scale)
        for (x0, x1), wxj in zip(xs, wx):
            out = fn(x[..., y0:y1, x0:x1], (y0, y1, x0, x1))
            out = out.to(accumulate_device if accumulate_device is not None else out.device, torch.float32)
            if acc is None:
                acc = out.new_zeros(out.shape[0], out.shape[1], h * scale, w * scale)
                wsum = out.new_zeros(1, 1, h * scale, w * scale)
            weight = (wy[:, None] * wxj[None, :]).to(out)[None, None]
            acc[..., y0 * scale:y1 * scale, x0 * scale:x1 * scale] += out * weight
            wsum[..., y0 * scale:y1 * scale, x0 * scale:x1 * scale] += weight
    return acc / wsum

"""Restore frames larger than a tile in overlapping tiles, blended without seams.

A frame whose low-res (LR) side exceeds `TileConfig.tile` is cut, along that axis, into
tiles of `tile` LR pixels (the last one up to `align - 1` pixels longer) that overlap by at
least `overlap` pixels. Each tile is restored by the wrapped restorer; the high-res (HR)
tiles are blended into the frame with per-tile weights and normalised by the sum of the
weights, so any set of positive weights gives a weighted average of the tiles.

Weights (per axis, multiplied): 1 inside the tile, 0 on the `margin` pixels at an edge
shared with a neighbour (where the model sees a cut-off context), and a raised-cosine ramp
between (`0.5 - 0.5 cos(pi t)`). Where two tiles overlap by exactly `overlap`, the two
ramps are complementary (they sum to 1), so the blend is a smooth cross-fade with no
visible edge. A frame border is never a tile edge: there the weight stays 1.

- Tile starts are multiples of `align` LR pixels: the UNet downsamples by powers of 2, so
  a tile whose offset is a multiple of its total stride sees the same pixel grid as the
  whole frame does and agrees with it away from the tile edges.
- Noise: the wrapped restorer draws its noise for the whole frame once (`noise_channels`)
  and each tile gets its crop, so tiled and untiled diffusion see the same noise at the
  same pixel.
- Temporal state: the tiled state is the previous whole (blended) frame; each tile is
  conditioned on its crop of it (`Restorer.state_from`), and no tile drifts from its
  neighbours. With `halo` > 0 (and a restorer whose `state_from` takes `context`) the flow
  and the warp of the previous frame run on a window `halo` px larger than the tile, so
  content that moves in from a neighbouring tile is warped in, not marked invalid; the
  temporal input is then cut to the tile.
- Memory: only one tile is on the model's device at a time; the blend accumulators (HR
  frame + weight sum) live on `accumulate_device` (default CPU).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from models.tiles import TileConfig, axis_weights, tile_spans, tiled_map

__all__ = ["TileConfig", "TiledRestorer", "TiledState", "axis_weights", "tile_spans"]


@dataclasses.dataclass
class TiledState:
    """Recurrent state of a tiled restoration: the previous whole frame, LR and restored HR."""

    lq: torch.Tensor       # (1, 3, h, w) previous LR frame
    hr: torch.Tensor       # (1, 3, s*h, s*w) previous blended restored frame (accumulate_device)


class TiledRestorer:
    """Wrap a restorer (see `pipelines.restore.restorers.Restorer`) so that large frames are tiled.

    Frames that fit in one tile go straight to the wrapped restorer (same state, same
    result). Larger frames: see the module docstring.
    """

    def __init__(self, inner: Any, cfg: TileConfig = TileConfig(), accumulate_device: str | torch.device = "cpu"):
        self.inner = inner
        self.cfg = cfg
        self.scale = int(inner.scale)
        self.noise_channels: tuple[int, ...] = tuple(getattr(inner, "noise_channels", ()))
        self.accumulate_device = torch.device(accumulate_device)
        self.tiles_last_frame = 1

    def state_from(self, lq: torch.Tensor, hr: torch.Tensor):
        return TiledState(lq=lq, hr=hr)

    def randn(self, shape, generator: torch.Generator | None) -> torch.Tensor:
        """Whole-frame noise drawn as the wrapped restorer draws it (on its device)."""
        inner = getattr(self.inner, "randn", None)
        return inner(shape, generator) if inner is not None else torch.randn(shape, generator=generator)

    def restore_frame(self, lq: torch.Tensor, state: Any, noise: Sequence[torch.Tensor] | None = None):
        """lq (1, 3, h, w) in [0, 1] -> (hr (1, 3, s*h, s*w), next state)."""
        return self.restore_batch([lq], [state], [noise])[0]

    def restore_batch(self, lqs: Sequence[torch.Tensor], states: Sequence[Any],
                      noises: Sequence[Sequence[torch.Tensor] | None]) -> list[tuple[torch.Tensor, Any]]:
        """Frame t of several streams, each lq (1, 3, h, w) of one size: tile by tile, the same
        tile of every stream in one call of the wrapped restorer (`restorers.restore_batch`)."""
        from pipelines.restore.restorers import restore_batch

        for lq in lqs:
            if lq.dim() != 4 or lq.shape[0] != 1 or lq.shape[1] != 3 or lq.shape != lqs[0].shape:
                raise ValueError(f"every lq must be (1, 3, h, w) of one size, got {tuple(lq.shape)}")
        h, w = lqs[0].shape[-2:]
        ys, xs = tile_spans(h, self.cfg), tile_spans(w, self.cfg)
        self.tiles_last_frame = len(ys) * len(xs)
        if len(ys) == 1 and len(xs) == 1:
            inner_states = [state.inner if isinstance(state, _Untiled) else None for state in states]
            out = restore_batch(self.inner, lqs, inner_states, noises)
            return [(hr, _Untiled(st)) for hr, st in out]
        if any(isinstance(state, _Untiled) for state in states):
            raise ValueError("frame size changed within a shot (untiled -> tiled)")
        if any(n is None for n in noises):          # the tiles must share one whole-frame draw
            noises = [[self.randn((1, c, h, w), None) for c in self.noise_channels] for _ in lqs]
        s, n = self.scale, len(lqs)
        noise = [torch.cat(parts) for parts in zip(*noises)]            # (B, c, h, w) each

        def restore_tile(tile_lq: torch.Tensor, span: tuple[int, int, int, int]) -> torch.Tensor:
            """(B, 3, th, tw) crops of every stream -> (B, 3, s*th, s*tw): the tile's crops of the
            whole-frame noise and of the previous whole frame, restored in one call."""
            y0, y1, x0, x1 = span
            tile_noises = [[c[i:i + 1, :, y0:y1, x0:x1] for c in noise] for i in range(n)]
            tile_states = [None if state is None else self._tile_state(state, lq, span)
                           for state, lq in zip(states, lqs)]
            out = restore_batch(self.inner, list(tile_lq.split(1)), tile_states, tile_noises)
            return torch.cat([hr.to(self.accumulate_device, torch.float32) for hr, _ in out])

        hr = tiled_map(restore_tile, torch.cat(lqs), self.cfg, s, accumulate_device=self.accumulate_device)
        return [(hr[i:i + 1], TiledState(lq=lq, hr=hr[i:i + 1])) for i, lq in enumerate(lqs)]

    def _tile_state(self, state: TiledState, lq: torch.Tensor, tile: tuple[int, int, int, int]):
        """The tile's crop of the previous whole frame; with a halo, the crop of a window `halo` px
        larger on every side (within the frame), for restorers whose `state_from` takes the
        window's context (flow and warp see content moving in from a neighbouring tile)."""
        y0, y1, x0, x1 = tile
        s, halo = self.scale, self.cfg.halo
        h, w = lq.shape[-2:]
        if halo and getattr(self.inner, "state_takes_context", False):
            a0, a1, b0, b1 = max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo)
            return self.inner.state_from(state.lq[..., a0:a1, b0:b1], state.hr[..., a0 * s:a1 * s, b0 * s:b1 * s]
                                         .to(lq.device), context=(lq[..., a0:a1, b0:b1],
                                                                  (y0 - a0, y1 - a0, x0 - b0, x1 - b0)))
        return self.inner.state_from(state.lq[..., y0:y1, x0:x1], state.hr[..., y0 * s:y1 * s, x0 * s:x1 * s]
                                     .to(lq.device))


@dataclasses.dataclass
class _Untiled:
    """State of a frame that fitted in one tile: the wrapped restorer's own state."""

    inner: Any

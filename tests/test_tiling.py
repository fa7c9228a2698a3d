"""pipelines.restore.tiling: tile layout, exact agreement with a local 'model', no seams, per-tile state."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.restore.restorers import BicubicRestorer
from pipelines.restore.tiling import TileConfig, TiledRestorer, axis_weights, tile_spans


def smooth_frame(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(1, 3, h, w) in [0, 1] with detail at every scale (a real-ish texture)."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(img, size=(h, w), mode="area")


@pytest.mark.parametrize("length", [1, 40, 64, 65, 100, 143, 481, 1080])
def test_spans_cover_overlap_and_align(length):
    cfg = TileConfig(tile=64, overlap=16, margin=2, align=8)
    spans = tile_spans(length, cfg)
    assert spans[0][0] == 0 and spans[-1][1] == length
    if length <= 64:
        assert spans == [(0, length)]
    for (a0, a1), (b0, b1) in itertools.pairwise(spans):
        assert a1 - b0 >= cfg.overlap, spans              # enough overlap to blend in
        assert b0 > a0 and b0 % cfg.align == 0
    assert all(b - a <= cfg.tile + cfg.align - 1 for a, b in spans)


def test_weights_are_a_partition_of_unity_at_the_nominal_overlap():
    cfg = TileConfig(tile=64, overlap=16, margin=2, align=8)
    length, s = 112, 4                                     # spans (0, 64), (48, 112): overlap 16 exactly
    spans = tile_spans(length, cfg)
    assert spans == [(0, 64), (48, 112)]
    total = torch.zeros(length * s, dtype=torch.float64)
    for span in spans:
        total[span[0] * s:span[1] * s] += axis_weights(span, length, cfg, s)
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-12, rtol=0)
    w0 = axis_weights(spans[0], length, cfg, s)
    assert w0[: 48 * s + 2 * s].eq(1).all() and w0[-2 * s:].eq(0).all()  # zero on the margin


@pytest.mark.parametrize("mode", ["nearest", "bicubic"])
def test_tiled_equals_untiled_for_a_local_model(mode):
    """A model whose output at a pixel only depends on pixels within `margin`: the blend is
    exact (bicubic reads 2 LR px around, so margin 2 suffices)."""
    lq = smooth_frame(72, 100)
    inner = BicubicRestorer(4, mode=mode)
    whole, _ = inner.restore_frame(lq, None)
    tiled = TiledRestorer(inner, TileConfig(tile=40, overlap=12, margin=2, align=4))
    out, state = tiled.restore_frame(lq, None)
    assert tiled.tiles_last_frame == 3 * 4
    torch.testing.assert_close(out, whole, atol=2e-6, rtol=0)
    assert torch.equal(state.hr, out) and torch.equal(state.lq, lq)
    # and the margin matters: with none, bicubic edge effects leak in
    loose = TiledRestorer(inner, TileConfig(tile=40, overlap=12, margin=0, align=4))
    if mode == "bicubic":
        assert (loose.restore_frame(lq, None)[0] - whole).abs().max() > 1e-4


class ShiftyRestorer:
    """A 'model' with strong tile-edge artefacts: it brightens a band along every border of
    whatever it is given, and records the recurrent state it is handed."""

    scale, noise_channels = 2, (1,)

    def __init__(self):
        self.seen_states = []

    def state_from(self, lq, hr):
        return (lq, hr)

    def restore_frame(self, lq, state, noise=None):
        self.seen_states.append(state)
        hr = F.interpolate(lq, scale_factor=2, mode="bilinear", align_corners=False)
        band = torch.zeros_like(hr[:, :1])
        band[..., :3, :] = band[..., -3:, :] = band[..., :, :3] = band[..., :, -3:] = 0.3
        hr = hr + band + 0.01 * F.interpolate(noise[0], scale_factor=2)
        return hr, (lq, hr)


def test_no_seam_at_tile_borders_with_edge_artefacts():
    lq = smooth_frame(60, 90)
    cfg = TileConfig(tile=36, overlap=16, margin=3, align=2)
    tiled = TiledRestorer(ShiftyRestorer(), cfg)
    noise = [torch.randn(1, 1, 60, 90, generator=torch.Generator().manual_seed(0))]
    out, _ = tiled.restore_frame(lq, None, noise)
    ref, _ = ShiftyRestorer().restore_frame(lq, None, noise)
    # The bands at the tiles' interior edges must not show: the horizontal gradient across
    # every interior tile edge is no larger than the gradients elsewhere in the frame.
    edges = {x * 2 - 1 for span in tile_spans(90, cfg) for x in span if 0 < x < 90}
    assert len(edges) >= 4 and not seam_visible(out, edges)
    # away from the frame border the result equals the untiled model's (noise crops included)
    torch.testing.assert_close(out[..., 8:-8, 8:-8], ref[..., 8:-8, 8:-8], atol=1e-6, rtol=0)
    # the check can fail: tiles pasted side by side (no blending) show their bands
    pasted = ref.clone()
    for x0, x1 in tile_spans(90, cfg):
        for y0, y1 in tile_spans(60, cfg):
            tile_noise = [noise[0][..., y0:y1, x0:x1]]
            pasted[..., 2 * y0:2 * y1, 2 * x0:2 * x1] = ShiftyRestorer().restore_frame(
                lq[..., y0:y1, x0:x1], None, tile_noise)[0]
    assert seam_visible(pasted, edges)


def seam_visible(img: torch.Tensor, edges: set[int]) -> bool:
    """Mean |horizontal gradient| at the column boundaries `edges` above the 99th percentile
    of that gradient elsewhere (away from the frame border)."""
    grad = (img[..., :, 1:] - img[..., :, :-1]).abs().mean(dim=(0, 1, 2))
    elsewhere = [g for i, g in enumerate(grad.tolist())
                 if all(abs(i - e) > 4 for e in edges) and 8 < i < len(grad) - 8]
    return max(grad[i].item() for i in edges) > np.percentile(elsewhere, 99)


def test_per_tile_state_is_a_crop_of_the_previous_whole_frame():
    inner = ShiftyRestorer()
    cfg = TileConfig(tile=36, overlap=16, margin=3, align=2)
    tiled = TiledRestorer(inner, cfg)
    lq = smooth_frame(40, 60)
    noise = [torch.zeros(1, 1, 40, 60)]
    _, state = tiled.restore_frame(lq, None, noise)
    n = tiled.tiles_last_frame
    assert n == len(tile_spans(40, cfg)) * len(tile_spans(60, cfg)) > 1
    assert inner.seen_states == [None] * n                       # first frame: no state in any tile
    tiled.restore_frame(lq.flip(-1), state, noise)
    boxes = [(y, x) for y in tile_spans(40, cfg) for x in tile_spans(60, cfg)]
    for (prev_lq, prev_hr), ((y0, y1), (x0, x1)) in zip(inner.seen_states[n:], boxes):
        assert torch.equal(prev_lq, lq[..., y0:y1, x0:x1])
        assert torch.equal(prev_hr, state.hr[..., 2 * y0:2 * y1, 2 * x0:2 * x1])  # blended, not the tile's own


def test_tiled_map_equals_the_whole_map_for_a_local_decoder():
    """A decoder whose output pixel sees latents within 3 px (three 3x3 convs, then x4 pixel
    shuffle), tiled with a 4 px zero-weight margin: every blended pixel comes from tile
    interiors that saw all their context, so tiled == untiled (what `vae_tile` relies on)."""
    from models.tiles import TileConfig, tiled_map

    torch.manual_seed(0)
    decoder = torch.nn.Sequential(torch.nn.Conv2d(4, 16, 3, padding=1), torch.nn.SiLU(),
                                  torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.SiLU(),
                                  torch.nn.Conv2d(16, 48, 3, padding=1), torch.nn.PixelShuffle(4))
    z = torch.randn(2, 4, 45, 70)
    with torch.no_grad():
        whole = decoder(z)
        tiled = tiled_map(lambda part, _: decoder(part), z, TileConfig(tile=24, overlap=12, margin=4, align=1), 4)
        loose = tiled_map(lambda part, _: decoder(part), z, TileConfig(tile=24, overlap=12, margin=0, align=1), 4)
    assert tiled.shape == whole.shape == (2, 3, 180, 280)
    assert torch.allclose(tiled, whole, atol=1e-5)
    assert not torch.allclose(loose, whole, atol=1e-3)          # without the margin the edges show


def test_vae_tile_decodes_the_small_prior_exactly_and_leaves_small_frames_alone():
    import dataclasses

    from models.presets import build_random_bundle
    from models.upscaler.video import VideoUpscaler

    up = VideoUpscaler(build_random_bundle("small", seed=0))
    lq = torch.rand(1, 3, 40, 72)
    latents = torch.randn(1, 48, 40, 72) * 0.1
    whole = up.decode(latents, lq=lq)
    up.cfg = dataclasses.replace(up.cfg, vae_tile=24)
    assert torch.allclose(up.decode(latents, lq=lq), whole, atol=1e-6)
    with pytest.raises(ValueError, match="vae_tile"):
        dataclasses.replace(up.cfg, vae_tile=10)


def test_a_tile_halo_lets_content_move_in_from_the_neighbouring_tile(tmp_path):
    """With a flow of 3 LR px, a tile's temporal input (warped previous frame + valid mask)
    equals the whole frame's inside the tile when the tile's flow and warp see a 16 px halo;
    without it, pixels whose content comes from the next tile are lost at the tile edges."""
    from models.upscaler.video import TemporalState
    from pipelines.restore.config import RestoreConfig
    from pipelines.restore.restorers import load_restorer
    from pipelines.restore.tiling import TiledState
    from tests.test_restore import tiny_model_dir

    diffusion = load_restorer(RestoreConfig(model=tiny_model_dir(tmp_path / "m"), tile=0))
    up = diffusion.up

    def shift_flow(lq, prev):                      # current pixel p is seen at p + (3, 1) in the previous
        b, _, h, w = lq.shape
        return torch.stack([torch.full((b, h, w), 3.0), torch.full((b, h, w), 1.0)], 1)

    up.lowres_flow = shift_flow
    g = torch.Generator().manual_seed(0)
    prev_lq, lq = torch.rand(1, 3, 40, 72, generator=g), torch.rand(1, 3, 40, 72, generator=g)
    prev_hr = torch.rand(1, 3, 160, 288, generator=g)
    whole = up.temporal_input(lq, TemporalState(prev_lq, prev_hr))
    errors = {}
    for halo in (0, 16):
        tiled = TiledRestorer(diffusion, TileConfig(tile=32, overlap=12, margin=2, align=4, halo=halo))
        worst = 0.0
        for y0, y1 in tile_spans(40, tiled.cfg):
            for x0, x1 in tile_spans(72, tiled.cfg):
                state = tiled._tile_state(TiledState(prev_lq, prev_hr), lq, (y0, y1, x0, x1))
                t = diffusion._temporal(lq[..., y0:y1, x0:x1], state)
                worst = max(worst, float((t - whole[..., y0:y1, x0:x1]).abs().max()))
        errors[halo] = worst
    assert errors[16] < 1e-4 and errors[0] > 0.5, errors          # grid_sample rounding: ~3e-5

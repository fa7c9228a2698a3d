"""degrade.flowpairs: exact ground truth on real photos, occlusion / out-of-frame validity,
bounded motion, and the shared degradation of a pair."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from degrade import FlowPairConfig, degrade_flow_pair, make_flow_pair, preset
from models.flow.warp import backward_warp


def photo(name: str) -> torch.Tensor:
    return torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).float() / 255.0


STILL_CAMERA = {"camera_translation": 0.0, "camera_rotation": 0.0, "camera_zoom": (1.0, 1.0), "camera_perspective": 0.0}


def warp_error(img1, img2, flow):
    return (backward_warp(img2[None], flow[None])[0] - img1).abs().mean(0)


@pytest.mark.parametrize("name,other,seed", [("astronaut", "coffee", 0), ("chelsea", "astronaut", 1),
                                              ("coffee", "chelsea", 2)])
def test_warping_frame2_back_reproduces_frame1_where_valid(name, other, seed):
    img1, img2, flow, valid = make_flow_pair(photo(name), photo(other), FlowPairConfig(), np.random.default_rng(seed))
    h, w = img1.shape[-2:]
    assert flow.shape == (2, h, w) and valid.shape == (h, w) and valid.dtype == torch.bool
    err = warp_error(img1, img2, flow)
    assert 0.6 < float(valid.float().mean()) < 0.995
    assert float(err[valid].mean()) < 0.01, float(err[valid].mean())
    assert float(err[~valid].mean()) > 0.03          # what is marked invalid really does not match
    assert not torch.equal(img1, img2) and float(flow.abs().max()) > 2


def test_valid_is_false_where_a_moving_layer_covers_the_background():
    cfg = FlowPairConfig(layers=(1, 1), max_flow=20.0, layer_rotation=0.0, layer_zoom=(1.0, 1.0), **STILL_CAMERA)
    for seed in range(3):
        _, _, flow, valid = make_flow_pair(photo("astronaut"), photo("coffee"), cfg, np.random.default_rng(seed))
        moving = flow.norm(dim=0) > 1e-4                 # the layer: the camera is still
        background = ~moving
        t = flow[:, moving].mean(1)                       # pure translation of the layer
        assert torch.allclose(flow[:, moving], t[:, None], atol=1e-3)
        # Where the layer is in frame 2: its frame-1 mask shifted by t (nearest pixel, eroded
        # by the soft edge) -- background pixels there are covered in frame 2.
        shift = [round(float(t[1])), round(float(t[0]))]
        layer2 = torch.roll(moving, shifts=shift, dims=(0, 1))
        covered = -F.max_pool2d(-layer2[None, None].float(), 5, 1, 2)[0, 0] > 0.5   # erode 2 px
        hidden = covered & background
        assert hidden.sum() > 100, "the layer must move over some background"
        assert not valid[hidden].any()
        # The background far from the layer in both frames is valid, so is the layer's core.
        near = F.max_pool2d((moving | layer2)[None, None].float(), 9, 1, 4)[0, 0] > 0
        assert valid[background & ~near].all()
        core = -F.max_pool2d(-moving[None, None].float(), 9, 1, 4)[0, 0] > 0.5
        h, w = valid.shape
        xs = torch.arange(w)[None, :] + t[0]
        ys = torch.arange(h)[:, None] + t[1]
        lands = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
        assert core.sum() > 100 and valid[core & lands].all()   # the (only, top) layer is never hidden


def test_points_leaving_the_frame_are_invalid_and_motion_is_bounded():
    cfg = FlowPairConfig(layers=(0, 0), max_flow=16.0, camera_translation=1.0, camera_rotation=0.0,
                         camera_zoom=(1.0, 1.0), camera_perspective=0.0)
    img1, _, flow, valid = make_flow_pair(photo("chelsea"), photo("coffee"), cfg, np.random.default_rng(4))
    h, w = img1.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    x2, y2 = xs + flow[0], ys + flow[1]
    outside = (x2 < 0) | (x2 > w - 1) | (y2 < 0) | (y2 > h - 1)
    assert outside.sum() > 100 and not valid[outside].any() and valid[~outside].all()
    for seed in range(4):
        for max_flow in (4.0, 32.0):
            _, _, f, _ = make_flow_pair(photo("astronaut")[:, :200, :240], photo("coffee"),
                                        FlowPairConfig(max_flow=max_flow), np.random.default_rng(seed))
            assert float(f.norm(dim=0).max()) <= max_flow + 1e-3


def test_same_seed_same_pair():
    a = make_flow_pair(photo("coffee")[:, :160, :200], photo("chelsea"), FlowPairConfig(), np.random.default_rng(8))
    b = make_flow_pair(photo("coffee")[:, :160, :200], photo("chelsea"), FlowPairConfig(), np.random.default_rng(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_degrade_flow_pair_shares_one_draw_and_rescales_flow():
    img1, img2, flow, valid = make_flow_pair(photo("astronaut")[:, :150, :202], photo("coffee"), FlowPairConfig(),
                                             np.random.default_rng(3))
    d1, d2, f1, v1, rec = degrade_flow_pair(img1, img2, flow, valid, preset("heavy", scale=1), np.random.default_rng(0))
    assert d1.shape == img1.shape and torch.equal(f1, flow) and torch.equal(v1, valid)
    assert rec["frames"] == 2 and rec["scale"] == 1
    assert not torch.equal(d1, img1) and not torch.equal(d2, img2)
    d1, _, f2, v2, _ = degrade_flow_pair(img1, img2, flow, valid, preset("medium", scale=2), np.random.default_rng(0))
    assert d1.shape == (3, 75, 101) and f2.shape == (2, 75, 101) and v2.shape == (75, 101)
    # Flow at the LQ pixel (i, j) is the HQ flow at the centre of its 2x2 block, halved.
    block = flow[:, :150, :202].unfold(1, 2, 2).unfold(2, 2, 2).mean((-1, -2))
    assert torch.allclose(f2, block / 2, atol=1e-5)
    vb = valid[:150, :202].unfold(0, 2, 2).unfold(1, 2, 2).all(-1).all(-1)
    assert torch.equal(v2, vb)


def test_flow_pair_bad_input():
    with pytest.raises(ValueError, match="floating-point"):
        make_flow_pair((photo("coffee") * 255).byte(), photo("chelsea"), FlowPairConfig(), 0)
    with pytest.raises(ValueError, match="rank 3"):
        make_flow_pair(photo("coffee")[None], photo("chelsea"), FlowPairConfig(), 0)
    img1, img2, flow, valid = make_flow_pair(photo("coffee")[:, :64, :64], photo("chelsea"), FlowPairConfig(), 0)
    with pytest.raises(ValueError, match="shapes disagree"):
        degrade_flow_pair(img1, img2, flow[:, :32], valid, preset("clean", scale=1), 0)
    with pytest.raises(ValueError, match="too small"):
        degrade_flow_pair(img1[:, :8, :8], img2[:, :8, :8], flow[:, :8, :8], valid[:8, :8], preset("heavy", scale=1), 0)

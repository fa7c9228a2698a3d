"""models.color_fix on a real photograph: a colour cast over part of a frame is taken out,
detail is kept, and the restore job's --color-fix applies it to every output frame."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.color_fix import adain_fix, color_fix, low_pass, wavelet_fix
from pipelines.restore.restorers import BicubicRestorer, ColorFixedRestorer


def photo() -> torch.Tensor:
    from skimage import data

    img = torch.from_numpy(data.astronaut()[:256, :256].copy()).permute(2, 0, 1).float()[None] / 255
    return img                                                               # (1, 3, 256, 256)


def psnr(a, b) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a, b)))


def test_wavelet_fix_removes_a_local_cast_and_keeps_the_detail():
    gt = photo()
    lq = F.interpolate(gt, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    cast = gt.clone()
    cast[:, 0, :128] += 0.12                                                 # red tint, top half only
    cast[:, 2, 128:] -= 0.08                                                 # less blue, bottom half
    cast = cast.clamp(0, 1)
    fixed = color_fix(cast, lq, "wavelet")
    assert psnr(fixed, gt) > psnr(cast, gt) + 6
    detail = lambda x: x - low_pass(x)                                       # noqa: E731
    assert psnr(detail(fixed), detail(gt)) > 30                              # the detail bands are the output's
    # against the output's own bicubic reference nothing changes but the low-pass
    assert psnr(wavelet_fix(gt, gt), gt) > 50


def test_adain_matches_channel_statistics_and_fixes_a_global_cast():
    gt = photo()
    lq = F.interpolate(gt, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    cast = (gt * torch.tensor([1.1, 0.95, 0.85])[None, :, None, None] + 0.03).clamp(0, 1)
    fixed = color_fix(cast, lq, "adain")
    ref = F.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    assert torch.allclose(fixed.mean((-2, -1)), ref.mean((-2, -1)), atol=0.01)
    assert psnr(fixed, gt) > psnr(cast, gt) + 5
    assert torch.equal(color_fix(cast, lq, "none"), cast)
    with pytest.raises(ValueError, match="colour fix"):
        color_fix(cast, lq, "sepia")
    assert adain_fix(gt, gt).sub(gt).abs().max() < 1e-3


def test_color_fixed_restorer_fixes_outputs_and_keeps_the_raw_state():
    class Tinted(BicubicRestorer):
        def restore_frame(self, lq, state=None, noise=None):
            hr, _ = super().restore_frame(lq, state, noise)
            return (hr + 0.1).clamp(0, 1), ("raw", hr + 0.1)

    gt = photo()
    lq = F.interpolate(gt, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    fixed, state = ColorFixedRestorer(Tinted(4), "adain").restore_frame(lq, None, [])
    raw, _ = Tinted(4).restore_frame(lq)
    assert psnr(fixed, gt) > psnr(raw, gt) + 3
    assert state[0] == "raw" and float(state[1].mean()) > float(fixed.mean())
    with pytest.raises(ValueError, match="--color-fix"):
        ColorFixedRestorer(Tinted(4), "sepia")
    assert np.isfinite(psnr(fixed, gt))


def test_the_restore_flag_wraps_the_restorer():
    from pipelines.restore.config import RestoreConfig
    from pipelines.restore.restorers import load_restorer

    assert isinstance(load_restorer(RestoreConfig(model="bicubic", color_fix="wavelet"), "cpu"), ColorFixedRestorer)
    assert not isinstance(load_restorer(RestoreConfig(model="bicubic"), "cpu"), ColorFixedRestorer)
    with pytest.raises(ValueError, match="--color-fix"):
        RestoreConfig(color_fix="sepia")

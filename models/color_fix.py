"""Colour fix: bring a restored frame's colours back to the input's.

Diffusion restorers drift in colour: a tint or a brightness shift over whole regions that
the low-res input does not have. A colour fix keeps the restored detail and takes the
colour from a reference, the bicubic upscale of the low-res input (StableSR's post-process;
users of SeeSR and SeedVR2 ask for it). Two kinds:

- `wavelet`: split both images into detail and a low-pass residual with an a-trous wavelet
  (`levels` blurs by a 3x3 binomial kernel dilated 1, 2, 4, ... px); keep the output's
  detail and the reference's low-pass. Local: fixes a tint in one region only.
- `adain`: per channel, give the output the reference's mean and standard deviation
  (adaptive instance normalisation). Global: one affine map per channel.

Images are (B, 3, H, W) in [0, 1]; the result is clamped to [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIXES = ("none", "wavelet", "adain")


def _blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """3x3 binomial blur with holes of `dilation` px, edges replicated. (B, C, H, W) -> same."""
    k1 = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device) / 4
    kernel = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 3, 3)
    pad = min(dilation, x.shape[-2] - 1, x.shape[-1] - 1)         # replicate pad needs pad < size
    if pad < dilation:
        dilation = max(pad, 1)
    x = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.conv2d(x, kernel, dilation=dilation, groups=x.shape[1])


def low_pass(x: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """The a-trous wavelet's residual after `levels` detail bands are taken out."""
    for i in range(levels):
        x = _blur(x, 2 ** i)
    return x


def wavelet_fix(out: torch.Tensor, ref: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """The output's detail bands on the reference's low-pass."""
    return (out - low_pass(out, levels) + low_pass(ref, levels)).clamp(0, 1)


def adain_fix(out: torch.Tensor, ref: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The output standardised per channel, then given the reference's mean and std."""
    mu_o, sd_o = out.mean((-2, -1), keepdim=True), out.std((-2, -1), keepdim=True)
    mu_r, sd_r = ref.mean((-2, -1), keepdim=True), ref.std((-2, -1), keepdim=True)
    return ((out - mu_o) / (sd_o + eps) * sd_r + mu_r).clamp(0, 1)


def color_fix(out: torch.Tensor, lq: torch.Tensor, mode: str) -> torch.Tensor:
    """`out` (B, 3, sH, sW) fixed toward bicubic(`lq` (B, 3, H, W)) by `mode` (COLOR_FIXES)."""
    if mode not in COLOR_FIXES:
        raise ValueError(f"colour fix must be one of {COLOR_FIXES}, got {mode!r}")
    if mode == "none":
        return out
    ref = F.interpolate(lq.to(out.device, out.dtype), size=out.shape[-2:], mode="bicubic",
                        align_corners=False).clamp(0, 1)
    return wavelet_fix(out, ref) if mode == "wavelet" else adain_fix(out, ref)

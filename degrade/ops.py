"""The tensor operations of the chain, each on (N, C, H, W) float32 on any device.

Every function is deterministic in its arguments (noise takes an explicit seed), which is
what makes a record replay bit-identically on the same device.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from degrade import kernels

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights, for grey Poisson noise
POISSON_EXACT_BELOW = 16      # photons: exact Poisson below, normal approximation above
KERNEL_TAIL = 1e-4            # blur kernels are trimmed to the window holding all but this
#                               fraction of their absolute mass (then renormalised)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Float `(..., 3, H, W)` in [0, 1] -> uint8 numpy `(..., H, W, 3)`, rounded (the one
    conversion: the codec, previews, restoration and metrics all use it)."""
    return frames.detach().clamp(0, 1).mul(255).round().to(dtype=torch.uint8).movedim(-3, -1).cpu().numpy()


def reflect_pad_ok(h: int, w: int, size: int) -> bool:
    """Reflect padding by size // 2 needs more than size // 2 pixels on each axis."""
    return min(h, w) > size // 2


def trim_radius(ks: np.ndarray, tail: float = KERNEL_TAIL) -> int:
    """Smallest radius r such that, for every kernel of (T, k, k), the centred (2r+1)^2
    window holds all but `tail` of its absolute mass."""
    k = ks.shape[-1]
    c = k // 2
    a = np.abs(ks)
    total = a.sum(axis=(1, 2))
    for r in range(c + 1):
        inside = a[:, c - r:c + r + 1, c - r:c + r + 1].sum(axis=(1, 2))
        if np.all(total - inside <= tail * total):
            return r
    return c


def blur(clip: torch.Tensor, params: dict) -> torch.Tensor:
    """Blur a clip (T, C, H, W) with one kernel per frame (a blur record), reflect padding.

    One grouped conv2d: the T*C planes are the groups, plane (t, c) gets frame t's kernel.
    Kernels are trimmed to their effective support first (`trim_radius`): a 21x21 kernel
    of sigma 1 becomes 9x9, a change below 1e-4 of the signal and 2-5x less work.
    """
    t, c, h, w = clip.shape
    size = int(params["size"])
    if not reflect_pad_ok(h, w, size):
        raise ValueError(f"frame {h}x{w} is too small for a {size}x{size} blur kernel "
                         f"(reflect padding needs at least {size // 2 + 1} px per side)")
    ks = np.stack([kernels.build(params, i) for i in range(t)])          # (T, k, k) float64
    r, centre = trim_radius(ks), size // 2
    ks = ks[:, centre - r:centre + r + 1, centre - r:centre + r + 1]
    ks = ks / ks.sum(axis=(1, 2), keepdims=True)
    weight = torch.from_numpy(ks).to(device=clip.device, dtype=clip.dtype)
    weight = weight[:, None].repeat_interleave(c, dim=0)                  # (T*C, 1, k', k')
    x = F.pad(clip.reshape(1, t * c, h, w), (r, r, r, r), mode="reflect")
    return F.conv2d(x, weight, groups=t * c).reshape(t, c, h, w)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """F.interpolate to `size` (h, w); no antialiasing, as in Real-ESRGAN (aliasing is
    part of the degradation). "area" is a box average for downscaling."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "area":
        return F.interpolate(x, size=tuple(size), mode="area")
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)
    raise ValueError(f"unknown resize mode {mode!r}; choose from area, bilinear, bicubic")


def _generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def noise(clip: torch.Tensor, params: dict) -> torch.Tensor:
    """Add noise to a clip (T, C, H, W) in [0, 1] and clamp to [0, 1].

    gaussian: N(0, (sigma_t / 255)^2) per pixel, per channel or shared ("gray").
    poisson:  shot noise of an image of 255 photons at full scale, i.e. Poisson(255 v) / 255 - v,
              times `scale_t` (Real-ESRGAN's multiplier); "gray": computed on the BT.601
              luma and added to all channels. (Real-ESRGAN counts the image's distinct
              levels instead of 255; for natural 8-bit frames that count is ~256.)
              Counts of POISSON_EXACT_BELOW photons or more are drawn from the rounded
              normal approximation N(lam, lam) (torch.poisson costs ~15x a randn on CPU);
              darker pixels, where the approximation is poor, get exact Poisson draws.
    Values are drawn from a torch.Generator on the clip's device seeded with params["seed"].
    """
    t, c, h, w = clip.shape
    g = _generator(clip.device, params["seed"])
    gray = bool(params["gray"])
    if params["kind"] == "gaussian":
        sigma = torch.tensor(params["sigma"], dtype=clip.dtype, device=clip.device).view(t, 1, 1, 1) / 255.0
        n = torch.randn((t, 1 if gray else c, h, w), generator=g, device=clip.device, dtype=clip.dtype)
        out = clip + n * sigma
    elif params["kind"] == "poisson":
        scale = torch.tensor(params["scale"], dtype=clip.dtype, device=clip.device).view(t, 1, 1, 1)
        base = clip.clamp(0, 1)
        if gray:
            luma = torch.tensor(LUMA, dtype=clip.dtype, device=clip.device).view(1, 3, 1, 1)
            base = (base * luma).sum(1, keepdim=True)
        lam = torch.round(base * 255.0)
        counts = torch.round(lam + lam.sqrt() * torch.randn(lam.shape, generator=g, device=lam.device, dtype=lam.dtype))
        dark = lam < POISSON_EXACT_BELOW
        if bool(dark.any()):
            counts[dark] = torch.poisson(lam[dark], generator=g)
        shot = counts.clamp_(min=0) - lam
        out = clip + shot / 255.0 * scale
    else:
        raise ValueError(f"unknown noise kind {params['kind']!r}")
    return out.clamp(0, 1)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 8-bit levels (the LQ is an 8-bit video)."""
    return torch.round(x.clamp(0, 1) * 255.0) / 255.0

"""Temporal conditioning of the student: the previous restored frame, motion-compensated.

StableVSR-style: the flow is estimated on the low-resolution frames (current -> previous),
upscaled to the restored resolution and used to backward-warp the previous *restored*
frame onto the current one. The warped frame is then brought to the latent resolution
(which, for the x4 upscaler, is the low-resolution input's own size) and concatenated to
the UNet input as extra channels.

Bringing the warped HR frame to latent resolution: `pixel_unshuffle` by the VAE factor
(default). It is lossless (every HR pixel lands in one of 3*s*s channels), costs nothing
(a reshape, no VAE encode) and keeps exactly the high-frequency detail that the student
synthesised for the previous frame, which is what it must repeat to stay temporally
consistent. A bilinear (antialiased) downsample to 3 channels is offered as the cheap
alternative ("bilinear"); it throws that detail away. The extra conv_in weights are
zero-initialised either way, so the choice costs nothing at step 0 and only
`3*s*s + 1` input channels of one 3x3 conv (113k parameters for sd-x4's 256-wide conv_in).

Channels, in order: the encoded warped frame in [-1, 1], then one "valid" channel: 1 where
a previous frame exists and the flow stays inside it, 0 elsewhere. The first frame of a
shot (no previous frame) is all zeros, including the valid channel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.flow.warp import backward_warp, out_of_frame

ENCODINGS = ("unshuffle", "bilinear")


def temporal_channels(encoding: str, scale: int) -> int:
    """Number of extra UNet input channels for `encoding` at upscaling factor `scale`."""
    if encoding == "unshuffle":
        return 3 * scale * scale + 1
    if encoding == "bilinear":
        return 3 + 1
    raise ValueError(f"temporal encoding must be one of {ENCODINGS}, got {encoding!r}")


def upscale_flow(flow: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, 2, h, w) low-res flow -> (B, 2, s*h, s*w), in high-res pixels.

    Bilinear with align_corners=False samples the low-res field at the high-res pixel
    centres ((X + 0.5) / s - 0.5); the displacement is then multiplied by s.
    """
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be (B, 2, h, w), got {tuple(flow.shape)}")
    up = F.interpolate(flow, scale_factor=scale, mode="bilinear", align_corners=False)
    return up * scale


def encode_previous(warped_hr: torch.Tensor, valid: torch.Tensor, scale: int,
                    encoding: str = "unshuffle") -> torch.Tensor:
    """Warped previous frame (B, 3, s*h, s*w) in [0, 1] + valid (B, 1, h, w) -> (B, C, h, w)."""
    b, c, hh, ww = warped_hr.shape
    if c != 3 or hh % scale or ww % scale:
        raise ValueError(f"warped_hr must be (B, 3, H, W) with H, W multiples of {scale}, "
                         f"got {tuple(warped_hr.shape)}")
    h, w = hh // scale, ww // scale
    if valid.shape != (b, 1, h, w):
        raise ValueError(f"valid must be {(b, 1, h, w)}, got {tuple(valid.shape)}")
    x = warped_hr * 2 - 1                                   # same range as the low-res input
    if encoding == "unshuffle":
        x = F.pixel_unshuffle(x, scale)                     # (B, 3*s*s, h, w)
    elif encoding == "bilinear":
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    else:
        raise ValueError(f"temporal encoding must be one of {ENCODINGS}, got {encoding!r}")
    return torch.cat([x * valid, valid.to(x.dtype)], dim=1)


def no_previous(batch: int, height: int, width: int, scale: int, encoding: str = "unshuffle",
                device=None, dtype=torch.float32) -> torch.Tensor:
    """(B, C, h, w) zeros: the explicit "first frame of a shot" input (valid channel 0)."""
    return torch.zeros(batch, temporal_channels(encoding, scale), height, width,
                       device=device, dtype=dtype)


def warp_previous(prev_hr: torch.Tensor, lr_flow: torch.Tensor, scale: int,
                  encoding: str = "unshuffle") -> torch.Tensor:
    """Warp the previous restored frame with the low-res flow current -> previous.

    prev_hr (B, 3, s*h, s*w) in [0, 1]; lr_flow (B, 2, h, w) in low-res pixels, the flow
    from the current frame to the previous one (pixel p of the current frame is seen at
    p + flow(p) in the previous). Returns the (B, C, h, w) temporal input.
    """
    b, _, h, w = lr_flow.shape
    if prev_hr.shape != (b, 3, h * scale, w * scale):
        raise ValueError(f"previous restored frame must be {(b, 3, h * scale, w * scale)}, "
                         f"got {tuple(prev_hr.shape)}")
    flow_hr = upscale_flow(lr_flow, scale)
    warped = backward_warp(prev_hr, flow_hr.to(prev_hr.dtype), padding_mode="border")
    valid = (~out_of_frame(lr_flow)).to(prev_hr.dtype)       # (B, 1, h, w)
    return encode_previous(warped, valid, scale, encoding)

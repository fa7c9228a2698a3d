"""Baseline JPEG (4:2:0) in PyTorch: runs on the tensors' device, one quality per image.

Pipeline (ITU-T T.81 / JFIF): RGB -> full-range YCbCr, chroma 2x2 averaged, level shift,
8x8 orthonormal DCT-II, quantisation by the Annex K tables scaled with the IJG quality
formula, rounding, dequantisation, inverse DCT, chroma upsampled with the triangular
("fancy", libjpeg's default) filter, YCbCr -> RGB, rounded to 8 bits. Rounding uses a
straight-through estimator, so gradients flow (identity) while forward values are exact.
Sizes that are not multiples of 16 are edge-padded and cropped back, as encoders do.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU-T T.81 Annex K, Tables K.1 (luminance) and K.2 (chrominance).
LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61), (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56), (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77), (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101), (72, 92, 95, 98, 112, 100, 103, 99))
CHROMA_TABLE = ((17, 18, 24, 47) + (99,) * 4, (18, 21, 26, 66) + (99,) * 4,
                (24, 26, 56) + (99,) * 5, (47, 66) + (99,) * 6) + ((99,) * 8,) * 4

# JFIF full-range conversion (T.871), on 0..255 values; Cb/Cr offset 128.
RGB_TO_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
YCC_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """torch.round forward, identity gradient."""
    return _RoundSTE.apply(x)


def dct_matrix(device=None, dtype=torch.float32) -> torch.Tensor:
    """(8, 8) orthonormal DCT-II: D[k, n] = c_k cos((2n + 1) k pi / 16)."""
    n = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] = math.sqrt(1 / 8)
    return d.to(device=device, dtype=dtype)


def quant_tables(quality: torch.Tensor, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """IJG scaling of the Annex K tables: (N, 8, 8) luma and chroma tables, entries 1..255."""
    q = quality.to(device=device, dtype=torch.float64).clamp(1, 100).round()
    scale = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)[:, None, None]
    out = []
    for base in (LUMA_TABLE, CHROMA_TABLE):
        t = torch.tensor(base, dtype=torch.float64, device=device)
        out.append(torch.floor((t * scale + 50.0) / 100.0).clamp(1, 255).to(dtype))
    return out[0], out[1]


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N, H/8 * W/8, 64): one row per 8x8 block, row-major inside."""
    n, h, w = x.shape
    return x.reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(n, -1, 64)


def _unblocks(b: torch.Tensor, h: int, w: int) -> torch.Tensor:
    n = b.shape[0]
    return b.reshape(n, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(n, h, w)


def _code_plane(plane: torch.Tensor, table: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """DCT, quantise/round/dequantise, inverse DCT of one level-shifted plane per image.

    With rows of 64 pixels, the 2-D DCT D X D^T is X_row @ kron(D, D)^T, so the forward
    transform and the division by the table fold into one (64, 64) matrix per image, and
    dequantisation and the inverse transform into another: two batched GEMMs per plane.
    """
    _, h, w = plane.shape
    k = torch.kron(d, d)                                   # (64, 64), orthonormal
    t = table.reshape(-1, 64, 1)                           # (N, 64, 1)
    forward = k.T[None] / t.transpose(1, 2)                # (N, 64, 64): DCT then / table
    inverse = t * k[None]                                  # (N, 64, 64): * table then IDCT
    coef = round_ste(torch.bmm(_blocks(plane), forward))
    return _unblocks(torch.bmm(coef, inverse), h, w)


def jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Compress and decompress `x` (N, 3, H, W) in [0, 1] at `quality` (N,) (1..100).

    Returns (N, 3, H, W) in [0, 1] on 8-bit levels (multiples of 1/255).
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"jpeg expects (N, 3, H, W) RGB, got {tuple(x.shape)}")
    n, _, h, w = x.shape
    quality = torch.as_tensor(quality, device=x.device).reshape(-1)
    if quality.numel() != n:
        raise ValueError(f"jpeg needs one quality per image: {quality.numel()} for {n} images")
    ph, pw = (-h) % 16, (-w) % 16
    work = x.to(torch.float32)
    if ph or pw:
        work = F.pad(work, (0, pw, 0, ph), mode="replicate")
    # [0, 1] RGB -> level-shifted YCbCr on the 0..255 scale (Y - 128, Cb - 128, Cr - 128):
    # the *255 and the shifts ride along in the 1x1 convolution.
    m = torch.tensor(RGB_TO_YCC, dtype=torch.float32, device=x.device)[:, :, None, None] * 255.0
    ycc = F.conv2d(work, m, bias=torch.tensor([-128.0, 0.0, 0.0], device=x.device))
    luma_t, chroma_t = quant_tables(quality, device=x.device)
    d = dct_matrix(x.device)
    y = _code_plane(ycc[:, 0], luma_t, d)
    chroma = F.avg_pool2d(ycc[:, 1:], 2)                   # (N, 2, H/2, W/2) 4:2:0
    cn = chroma.shape
    coded = _code_plane(chroma.reshape(n * 2, cn[2], cn[3]), chroma_t.repeat_interleave(2, 0), d)
    # Triangular upsampling (weights 3/4, 1/4 per axis) == bilinear x2, half-pixel centres.
    chroma = F.interpolate(coded.reshape(n, 2, cn[2], cn[3]), scale_factor=2, mode="bilinear",
                           align_corners=False)
    to_rgb = torch.tensor(YCC_TO_RGB, dtype=torch.float32, device=x.device)  # Y weight is 1 for R, G, B
    rgb = F.conv2d(chroma, to_rgb[:, 1:, None, None], bias=torch.full((3,), 128.0, device=x.device))
    rgb = round_ste((rgb + y[:, None]).clamp(0, 255))
    if ph or pw:
        rgb = rgb[:, :, :h, :w]
    rgb = rgb / 255.0
    return rgb.to(x.dtype)

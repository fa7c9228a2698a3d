"""Weight-free pixel metrics and helpers: 8-bit frames, BT.601 luma, TecoGAN's centre crop,
PSNR, Gaussian SSIM (valid region), Farneback flow on grey frames.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from pipelines.common import video


def to_uint8(frame) -> np.ndarray:
    """(3, H, W) float tensor in [0, 1] or (H, W, 3) uint8 array -> (H, W, 3) uint8."""
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8:
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"uint8 frames must be (H, W, 3), got {frame.shape}")
        return frame
    if not torch.is_tensor(frame) or frame.ndim != 3 or frame.shape[0] != 3 or not frame.is_floating_point():
        raise ValueError("frames must be (3, H, W) float tensors in [0, 1] or (H, W, 3) uint8 arrays, got "
                         f"{tuple(frame.shape) if hasattr(frame, 'shape') else type(frame).__name__}")
    return video.to_uint8(frame.float())


def luma_bt601(rgb_u8: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float64 Y of BT.601 YCbCr in [16, 235] (not rounded)."""
    rgb = rgb_u8.astype(np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def tecogan_crop(height: int, width: int) -> tuple[slice, slice]:
    """TecoGAN's centre crop: the largest multiple of 32 leaving >= 8 px each side.
    A side under 48 px (where that crop would be empty) is kept whole."""
    def side(n: int) -> slice:
        m = (n // 32) * 32
        while m > n - 16:
            m -= 32
        if m <= 0:
            return slice(0, n)
        start = (n - m) // 2
        return slice(start, start + m)

    return side(height), side(width)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range ** 2 / mse)


def _gaussian_taps(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable correlation of (H, W, C) with `taps` on both axes, valid region only."""
    from numpy.lib.stride_tricks import sliding_window_view

    k = len(taps)
    rows = sliding_window_view(img, k, axis=0) @ taps          # (H-k+1, W, C)
    return sliding_window_view(rows, k, axis=1) @ taps         # (H-k+1, W-k+1, C)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Mean SSIM of (H, W) or (H, W, C) arrays: 11-tap Gaussian (sigma 1.5) window, K1 0.01,
    K2 0.03, population covariance, valid region only, channels averaged (float64)."""
    x = np.asarray(a, np.float64)
    y = np.asarray(b, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ {x.shape} vs {y.shape}")
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    if min(x.shape[0], x.shape[1]) < 11:
        raise ValueError(f"ssim needs frames of at least 11x11 pixels, got {x.shape[:2]}")
    taps = _gaussian_taps()
    f = lambda t: _filter_valid(t, taps)
    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


def farneback(prev_grey: np.ndarray, cur_grey: np.ndarray) -> np.ndarray:
    """(H, W, 2) float32 flow prev -> cur with TecoGAN's Farneback parameters."""
    import cv2

    return cv2.calcOpticalFlowFarneback(prev_grey, cur_grey, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def grey(rgb_u8: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb_u8, cv2.COLOR_RGB2GRAY)

"""Blur kernels of the second-order model, built in float64 NumPy from their parameters.

Every kernel is a (k, k) array, k odd, summing to 1, centred on the middle pixel, with x
(columns) horizontal. The families are those of Real-ESRGAN (Wang et al. 2021, Sec. 3.1):

  gaussian      exp(-q / 2)                  q = [x y] S^-1 [x y]^T,  S = R diag(sx^2, sy^2) R^T
  generalized   exp(-q^beta / 2)             (heavier or lighter tails than a Gaussian)
  plateau       1 / (1 + q^beta)             (flat top, heavy tails)
  sinc          w J1(w r) / (2 pi r)         (ideal circular low-pass of cutoff w: ringing)

"iso" kernels have sx = sy and no rotation. Building is deterministic in the recorded
parameters, so a record rebuilds its kernels exactly.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import j1


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size}")
    r = size // 2
    ax = np.arange(-r, r + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)  # xx varies along columns (x), yy along rows (y)
    return xx, yy


def mahalanobis2(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """q(x, y) for a Gaussian of std (sigma_x, sigma_y) rotated by theta (rad)."""
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"kernel sigmas must be > 0, got {sigma_x}, {sigma_y}")
    xx, yy = _grid(size)
    c, s = math.cos(theta), math.sin(theta)
    # Rotate the offsets into the kernel's principal axes: u along sigma_x, v along sigma_y.
    u = c * xx + s * yy
    v = -s * xx + c * yy
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalise(k: np.ndarray) -> np.ndarray:
    return k / k.sum()


def gaussian(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    return _normalise(np.exp(-0.5 * mahalanobis2(size, sigma_x, sigma_y, theta)))


def generalized_gaussian(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    return _normalise(np.exp(-0.5 * mahalanobis2(size, sigma_x, sigma_y, theta) ** beta))


def plateau(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    return _normalise(1.0 / (1.0 + mahalanobis2(size, sigma_x, sigma_y, theta) ** beta))


def sinc(size: int, omega: float) -> np.ndarray:
    """Circular low-pass of cutoff `omega` (rad/px): the 2-D Fourier transform of a disc."""
    if not 0 < omega <= math.pi:
        raise ValueError(f"sinc cutoff must be in (0, pi], got {omega}")
    xx, yy = _grid(size)
    r = np.hypot(xx, yy)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega * j1(omega * r) / (2 * math.pi * r)
    k[r == 0] = omega**2 / (4 * math.pi)  # limit r -> 0 (J1(z) ~ z/2)
    return _normalise(k)


def build(params: dict, frame: int = 0) -> np.ndarray:
    """The (k, k) kernel of one frame from a blur record (see `sampling.sample_blur`).

    `params`: {"type", "size", and per-frame lists "sigma_x", "sigma_y", "theta", "beta",
    "omega" (only those the type uses)}.
    """
    kind, size = params["type"], int(params["size"])
    if kind == "sinc":
        return sinc(size, params["omega"][frame])
    sx = params["sigma_x"][frame]
    sy = params["sigma_y"][frame]
    th = params["theta"][frame]
    if kind in ("iso", "aniso"):
        return gaussian(size, sx, sy, th)
    if kind in ("generalized_iso", "generalized_aniso"):
        return generalized_gaussian(size, sx, sy, th, params["beta"][frame])
    if kind in ("plateau_iso", "plateau_aniso"):
        return plateau(size, sx, sy, th, params["beta"][frame])
    raise ValueError(f"unknown blur kernel type {kind!r}")

"""Optical-flow pairs with exact ground truth, synthesised from one real frame.

Frame 1 is the real frame with 1..5 foreground layers pasted on it: pieces of another real
frame cut out by random soft-edged masks (ellipses or star-shaped blobs). Frame 2 is
*defined by inverse maps*: the background is frame1's background seen through a camera
homography H (frame-1 -> frame-2 coordinates), each layer k moves by its own affine map
A_k, and frame2(q) = background(H^-1 q) composited with layer_k(A_k^-1 q) in the same
order. So the flow of a frame-1 pixel p is analytic: H p - p on the background, A_k p - p
on layer k, and `backward_warp(frame2, flow)` = frame2(p + flow(p)) returns frame1(p) up
to bilinear interpolation error.

valid(p) is False where p
  * lies in a layer's soft edge in frame 1 (mixed colours have no single motion),
  * lands outside frame 2 (p + flow(p) outside [0, W-1] x [0, H-1]),
  * is hidden at its target: any of the 4 pixels around p + flow(p) in frame 2 belongs to
    another surface (a background point covered by a layer, or a layer point covered by a
    higher layer) or to a soft edge.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from degrade.chain import crop_to_scale, degrade_clip
from degrade.config import DegradeConfig
from models.flow.warp import pixel_grid, sample_at

RENDER = "bicubic"  # frame 2 resampling: sharper than bilinear, halves the warp-back error
EPS = 1e-4  # alpha this close to 0 or 1 counts as pure (bilinear weights sum to 1 only up to rounding)


@dataclass(frozen=True)
class FlowPairConfig:
    max_flow: float = 24.0                      # px: no pixel of frame 1 moves further (camera or layer)
    camera_translation: float = 0.5             # camera shift, as a fraction of max_flow per axis
    camera_rotation: float = math.radians(5)    # rad: camera roll range +-
    camera_zoom: tuple[float, float] = (0.93, 1.07)  # camera zoom factor range (log-uniform)
    camera_perspective: float = 0.1             # perspective terms, in units of 1 / max(H, W)
    layers: tuple[int, int] = (1, 5)            # number of foreground layers, inclusive
    layer_radius: tuple[float, float] = (0.08, 0.25)  # layer size as a fraction of min(H, W)
    layer_rotation: float = math.radians(15)    # rad: layer rotation range +-
    layer_zoom: tuple[float, float] = (0.85, 1.15)  # layer scale range (log-uniform)
    ellipse_prob: float = 0.5                   # ellipse masks, else star-shaped blobs
    edge_width: float = 2.0                     # px: width of the soft (anti-aliased) mask edge


def _homography(t, theta, log_zoom, persp, centre) -> np.ndarray:
    """T(c + t) R(theta) zoom P T(-c): frame-1 -> frame-2 pixel coordinates (3x3)."""
    cx, cy = centre
    c, s = math.cos(theta), math.sin(theta)
    z = math.exp(log_zoom)
    to_c = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], dtype=np.float64)
    rz = np.array([[z * c, -z * s, 0], [z * s, z * c, 0], [0, 0, 1]], dtype=np.float64)
    p = np.array([[1, 0, 0], [0, 1, 0], [persp[0], persp[1], 1]], dtype=np.float64)
    back = np.array([[1, 0, cx + t[0]], [0, 1, cy + t[1]], [0, 0, 1]], dtype=np.float64)
    return back @ rz @ p @ to_c


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map (N, 2) points (x, y) by a 3x3 matrix with the perspective divide."""
    x, y = pts[:, 0], pts[:, 1]
    w = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    return np.stack([(m[0, 0] * x + m[0, 1] * y + m[0, 2]) / w, (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / w], 1)


def _bounded_motion(make, pts: np.ndarray, max_flow: float) -> np.ndarray:
    """make(f): the motion with all parameters scaled by f (f = 0: identity). Shrink f
    until no point of `pts` moves more than max_flow px."""
    f = 1.0
    for _ in range(30):
        m = make(f)
        disp = np.linalg.norm(_apply(m, pts) - pts, axis=1).max() if len(pts) else 0.0
        if disp <= max_flow:
            return m
        f *= 0.97 * max_flow / disp
    return make(0.0)


def _camera(cfg: FlowPairConfig, h: int, w: int, rng) -> np.ndarray:
    t = rng.uniform(-1, 1, 2) * cfg.max_flow * cfg.camera_translation
    theta = rng.uniform(-cfg.camera_rotation, cfg.camera_rotation)
    lz = rng.uniform(math.log(cfg.camera_zoom[0]), math.log(cfg.camera_zoom[1]))
    persp = rng.uniform(-1, 1, 2) * cfg.camera_perspective / max(h, w)
    centre = ((w - 1) / 2, (h - 1) / 2)
    make = lambda f: _homography(t * f, theta * f, lz * f, persp * f, centre)
    ys, xs = np.mgrid[0:h:max(1, h // 16), 0:w:max(1, w // 16)]
    pts = np.concatenate([np.stack([xs.ravel(), ys.ravel()], 1),
                          [[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]]]).astype(np.float64)
    return _bounded_motion(make, pts, cfg.max_flow)


def _layer_mask(cfg: FlowPairConfig, h: int, w: int, rng) -> np.ndarray:
    """(H, W) float mask in [0, 1]: 1 inside, 0 outside, a linear ramp `edge_width` px wide."""
    r = rng.uniform(*cfg.layer_radius) * min(h, w)
    cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    dx, dy = xs - cx, ys - cy
    dist, phi = np.hypot(dx, dy), np.arctan2(dy, dx)
    if rng.uniform() < cfg.ellipse_prob:
        a, b = r, r * rng.uniform(0.4, 1.0)
        rot = rng.uniform(0, math.pi)
        u = phi - rot
        radius = a * b / np.sqrt((b * np.cos(u)) ** 2 + (a * np.sin(u)) ** 2)
    else:  # star-shaped blob: radius interpolated (periodically) between random vertices
        n = int(rng.integers(5, 11))
        angles = np.sort(rng.uniform(-math.pi, math.pi, n))
        radii = r * rng.uniform(0.45, 1.0, n)
        radius = np.interp(phi, angles, radii, period=2 * math.pi)
    return np.clip((radius - dist) / cfg.edge_width + 0.5, 0.0, 1.0)


def _layer_motion(cfg: FlowPairConfig, mask: np.ndarray, rng) -> np.ndarray:
    ys, xs = np.nonzero(mask > 0)
    pts = np.stack([xs, ys], 1).astype(np.float64)
    centre = pts.mean(0) if len(pts) else np.zeros(2)
    t = rng.uniform(-1, 1, 2) * cfg.max_flow
    theta = rng.uniform(-cfg.layer_rotation, cfg.layer_rotation)
    lz = rng.uniform(math.log(cfg.layer_zoom[0]), math.log(cfg.layer_zoom[1]))
    make = lambda f: _homography(t * f, theta * f, lz * f, np.zeros(2), centre)
    sub = pts[:: max(1, len(pts) // 4000)]
    return _bounded_motion(make, sub, cfg.max_flow)


def _check_frame(x, name: str) -> None:
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point torch tensor (C, H, W) in [0, 1], "
                         f"got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 3:
        raise ValueError(f"{name}: expected rank 3 (C, H, W), got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < 8:
        raise ValueError(f"{name}: frame {tuple(x.shape[-2:])} is too small for a flow pair (min 8 px)")


def _texture(other: torch.Tensor, h: int, w: int, rng) -> torch.Tensor:
    """`other` covering (h, w): upscaled if smaller, then a random (h, w) crop."""
    oh, ow = other.shape[-2:]
    f = max(h / oh, w / ow, 1.0)
    if f > 1.0:
        other = F.interpolate(other[None], size=(math.ceil(oh * f), math.ceil(ow * f)), mode="bilinear",
                              align_corners=False)[0]
        oh, ow = other.shape[-2:]
    y0, x0 = int(rng.integers(0, oh - h + 1)), int(rng.integers(0, ow - w + 1))
    return other[:, y0:y0 + h, x0:x0 + w]


def _map_grid(m: np.ndarray, h: int, w: int, device) -> torch.Tensor:
    """(1, 2, H, W) float32 coordinates m(q) of every pixel q (computed in float64)."""
    ys = torch.arange(h, dtype=torch.float64, device=device)[:, None]
    xs = torch.arange(w, dtype=torch.float64, device=device)[None, :]
    den = m[2, 0] * xs + m[2, 1] * ys + m[2, 2]
    out = torch.stack([(m[0, 0] * xs + m[0, 1] * ys + m[0, 2]) / den, (m[1, 0] * xs + m[1, 1] * ys + m[1, 2]) / den])
    return out.to(torch.float32)[None]


def make_flow_pair(frame: torch.Tensor, other: torch.Tensor, config: FlowPairConfig | None = None, rng=None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(frame1, frame2, flow (2, H, W) frame1 -> frame2 in px, x first, valid (H, W) bool)."""
    _check_frame(frame, "make_flow_pair: frame")
    _check_frame(other, "make_flow_pair: other")
    if frame.shape[0] != other.shape[0]:
        raise ValueError(f"make_flow_pair: frame has {frame.shape[0]} channels, other {other.shape[0]}")
    cfg = config or FlowPairConfig()
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    frame = frame.to(torch.float32)
    h, w = frame.shape[-2:]
    dev = frame.device
    cam = _camera(cfg, h, w, rng)
    n_layers = int(rng.integers(cfg.layers[0], cfg.layers[1] + 1))
    masks, textures, motions = [], [], []
    for _ in range(n_layers):
        mask = _layer_mask(cfg, h, w, rng)
        masks.append(torch.from_numpy(mask).to(device=dev, dtype=torch.float32))
        textures.append(_texture(other.to(device=dev, dtype=torch.float32), h, w, rng))
        motions.append(_layer_motion(cfg, mask, rng))

    # Frame 1: layers pasted bottom to top. owner1: -1 background, k layer k (alpha > 1/2).
    img1 = frame.clone()
    owner1 = torch.full((h, w), -1, dtype=torch.long, device=dev)
    pure1 = torch.ones((h, w), dtype=torch.bool, device=dev)
    for k, (m, tex) in enumerate(zip(masks, textures)):
        img1 = img1 * (1 - m) + tex * m
        owner1[m > 0.5] = k
        pure1 &= (m <= EPS) | (m >= 1 - EPS)  # a layer's soft edge spoils what lies below it
        pure1 |= m >= 1 - EPS                  # an opaque layer hides it

    # Frame 2 by inverse maps; owner2 / pure2 likewise, at frame-2 pixels.
    img2 = sample_at(frame[None], _map_grid(np.linalg.inv(cam), h, w, dev), mode=RENDER)[0]
    owner2 = torch.full((h, w), -1, dtype=torch.long, device=dev)
    pure2 = torch.ones((h, w), dtype=torch.bool, device=dev)
    for k, (m, tex, a) in enumerate(zip(masks, textures, motions)):
        coords = _map_grid(np.linalg.inv(a), h, w, dev)
        m2 = sample_at(m[None, None], coords, padding_mode="zeros")[0, 0]
        img2 = img2 * (1 - m2) + sample_at(tex[None], coords, mode=RENDER)[0] * m2
        owner2[m2 > 0.5] = k
        pure2 &= (m2 <= EPS) | (m2 >= 1 - EPS)
        pure2 |= m2 >= 1 - EPS

    # Flow: the motion of the surface that owns each frame-1 pixel.
    grid = pixel_grid(1, h, w, dev)[0]
    target = _map_grid(cam, h, w, dev)[0]
    for k, a in enumerate(motions):
        target = torch.where(owner1 == k, _map_grid(a, h, w, dev)[0], target)
    flow = target - grid

    # Validity: inside frame 2, and all 4 bilinear neighbours of the target are pure pixels
    # of the same surface.
    x, y = target[0], target[1]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    ok2 = torch.where(pure2, owner2, torch.full_like(owner2, -2))
    valid = pure1 & inside
    x0 = x.floor().clamp(0, w - 1).long()
    y0 = y.floor().clamp(0, h - 1).long()
    for yy in (y0, (y0 + 1).clamp(max=h - 1)):
        for xx in (x0, (x0 + 1).clamp(max=w - 1)):
            valid &= ok2[yy, xx] == owner1
    return img1.clamp(0, 1), img2.clamp(0, 1), flow, valid


def degrade_flow_pair(img1: torch.Tensor, img2: torch.Tensor, flow: torch.Tensor, valid: torch.Tensor,
                      config: DegradeConfig, rng):
    """Degrade both frames with one shared parameter draw (a 2-frame clip).

    Returns (img1_lq, img2_lq, flow_lq, valid_lq, record). With scale s > 1 the pair is cropped
    to a multiple of s like the frames, the flow is resampled at the LQ pixel centres
    (bilinear, align_corners=False) and divided by s, and valid_lq is True only where the
    whole s x s block it covers is valid (no interpolated flow across an occlusion).
    """
    for name, x in (("img1", img1), ("img2", img2)):
        if not torch.is_tensor(x) or x.ndim != 3:
            raise ValueError(f"degrade_flow_pair: {name} must be a (C, H, W) tensor, got "
                             f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    h, w = img1.shape[-2:]
    if img2.shape != img1.shape or tuple(flow.shape) != (2, h, w) or tuple(valid.shape) != (h, w):
        raise ValueError(f"degrade_flow_pair: shapes disagree: img1 {tuple(img1.shape)}, img2 "
                         f"{tuple(img2.shape)}, flow {tuple(flow.shape)} (want (2, H, W)), valid "
                         f"{tuple(valid.shape)} (want (H, W))")
    if valid.dtype != torch.bool:
        raise ValueError(f"degrade_flow_pair: valid must be a bool tensor, got {valid.dtype}")
    lq, record = degrade_clip(torch.stack([img1, img2]), config, rng)
    s = config.scale
    flow_c, valid_c = crop_to_scale(flow, s), crop_to_scale(valid, s)
    if s > 1:
        flow_c = F.interpolate(flow_c[None].float(), size=lq.shape[-2:], mode="bilinear",
                               align_corners=False)[0] / s
        valid_c = -F.max_pool2d(-(valid_c[None, None].float()), s)[0, 0] > 0.5
    return lq[0], lq[1], flow_c, valid_c, record

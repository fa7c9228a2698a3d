"""Weight-free flow baselines from OpenCV: DIS (medium preset) and Farneback.

Both take two (3, H, W) float tensors in [0, 1] (RGB) and return the flow from the first
to the second as a (2, H, W) float32 tensor in pixels, x first, on the first input's
device (computed on CPU through grayscale uint8 images).
"""
from __future__ import annotations

import numpy as np
import torch


def _gray_u8(img: torch.Tensor, name: str) -> np.ndarray:
    if not torch.is_tensor(img) or img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"{name} must be a (3, H, W) tensor, got "
                         f"{tuple(img.shape) if torch.is_tensor(img) else type(img).__name__}")
    rgb = img.detach().float().clamp(0, 1).cpu()
    gray = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (gray * 255).round().to(torch.uint8).numpy()


def _pair(img1: torch.Tensor, img2: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    a, b = _gray_u8(img1, "img1"), _gray_u8(img2, "img2")
    if a.shape != b.shape:
        raise ValueError(f"img1 {tuple(img1.shape)} and img2 {tuple(img2.shape)} differ in size")
    return a, b


def _to_tensor(flow: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(flow.transpose(2, 0, 1))).float().to(like.device)


def dis_flow(img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """OpenCV DIS optical flow, PRESET_MEDIUM (Kroeger et al. 2016)."""
    import cv2

    a, b = _pair(img1, img2)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return _to_tensor(dis.calc(a, b, None), img1)


def farneback_flow(img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """OpenCV Farneback flow: pyramid scale 0.5, 5 levels, window 15, 3 iterations, poly 5/1.2."""
    import cv2

    a, b = _pair(img1, img2)
    flow = cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=5, winsize=15, iterations=3,
                                        poly_n=5, poly_sigma=1.2, flags=0)
    return _to_tensor(flow, img1)

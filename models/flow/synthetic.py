"""Image pairs with known flow, made from one still image (sanity checks, smoke training)."""
from __future__ import annotations

import torch

from models.flow.warp import backward_warp


def translated_pair(image: torch.Tensor, shift: tuple[float, float], size: tuple[int, int],
                    origin: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop two frames of `image` (3, H, W) related by a global translation.

    frame1 = image[:, y0:y0+h, x0:x0+w]; frame2 shows the content moved by `shift` = (dx, dy)
    px (fractional shifts are bilinearly resampled), so the flow frame1 -> frame2 is `shift`
    everywhere and no pixel leaves the crop as long as the crop stays |shift| inside `image`.
    Returns (frame1 (3, h, w), frame2 (3, h, w), flow (2, h, w)).
    """
    if image.ndim != 3:
        raise ValueError(f"translated_pair: image must be (3, H, W), got {tuple(image.shape)}")
    (h, w), (y0, x0), (dx, dy) = size, origin, shift
    big_h, big_w = image.shape[-2:]
    margin = int(max(abs(dx), abs(dy))) + 2
    if y0 < margin or x0 < margin or y0 + h + margin > big_h or x0 + w + margin > big_w:
        raise ValueError(f"translated_pair: crop {size} at {origin} shifted by {shift} leaves the "
                         f"{big_h}x{big_w} image")
    flow_big = image.new_tensor([dx, dy]).view(1, 2, 1, 1).expand(1, 2, big_h, big_w)
    moved = backward_warp(image[None], -flow_big)[0]        # moved(q) = image(q - shift)
    crop = (slice(None), slice(y0, y0 + h), slice(x0, x0 + w))
    return image[crop].clone(), moved[crop].contiguous(), flow_big[0][crop].clone()

"""Synthetic videos for edge cases (cuts at known frames, odd sizes, bad bytes).

Real footage comes from `pipelines.common.samples`; these only cover what real samples cannot
pin down exactly.
"""
from __future__ import annotations

import numpy as np

from pipelines.common import video


def textured_frames(n: int, height: int, width: int, seed: int = 0, shift: int = 2) -> np.ndarray:
    """(n, H, W, 3) uint8: a smooth random texture panning `shift` px per frame."""
    rng = np.random.default_rng(seed)
    big = rng.random((height // 8 + 4, (width + n * shift) // 8 + 4, 3))
    import cv2

    tex = cv2.resize(big, ((width + n * shift) + 32, height + 32), interpolation=cv2.INTER_CUBIC)
    tex = (np.clip(tex, 0, 1) * 255).astype(np.uint8)
    return np.stack([tex[:height, i * shift:i * shift + width] for i in range(n)])


def shots_video(path: str, cuts: list[int], n: int, height: int = 96, width: int = 128,
                fps: int = 25, crf: int = 18) -> list[int]:
    """Write a video whose content changes completely at each frame index in `cuts`."""
    bounds = [0, *cuts, n]
    frames = []
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        clip = textured_frames(b - a, height, width, seed=100 + k)
        tint = np.array([[60, 0, 0], [0, 60, 0], [0, 0, 60], [40, 40, 0]][k % 4], dtype=np.int16)
        frames.append(np.clip(clip.astype(np.int16) + tint - 30, 0, 255).astype(np.uint8))
    video.write_video(path, np.concatenate(frames), fps=fps, crf=crf, preset="veryfast")
    return cuts


def corrupt_file(path: str, kind: str = "garbage", source: str | None = None) -> str:
    """Write a bad 'video': garbage bytes, empty, or the first third of a real file."""
    if kind == "garbage":
        data = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    elif kind == "empty":
        data = b""
    elif kind == "truncated":
        data = open(source, "rb").read()
        data = data[: len(data) // 3]
    elif kind == "text":
        data = b"this is a text file, not a video\n" * 100
    else:
        raise ValueError(kind)
    with open(path, "wb") as f:
        f.write(data)
    return path

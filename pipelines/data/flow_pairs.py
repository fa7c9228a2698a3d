"""Synthetic flow pairs from real frames, with exact ground truth: the one recipe.

A random `crop * flow_scale` px square of a real frame (random horizontal flip) becomes a
flow pair with `make_flow_pair` (`pair_config`: max displacement `max_flow * flow_scale`,
foreground layers cut from another frame), then both frames are degraded with ONE shared
draw of the preset at `scale=flow_scale` (`degrade_flow_pair`), so an LQ pair is `crop` px
with exact flow and validity at that size. DRFA's training loader (`pipelines.data.loaders`)
makes its pairs with `pair_config` from shard frames, streaming (the other frame is the
previous sample's, one generator per stream); `flow_pairs` here makes a fixed, indexable
set (evaluation, benchmarks): pair i from numpy Generator (seed, i), its other frame a random
frame, its degradation under preset p from (seed, i, index of p in PRESETS), so every preset
degrades the *same* clean pairs and pair i does not depend on how many pairs are asked for.
`load_frames` / `frame_split` give each video's training or held-out frames.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

MOTIONS = ("layers", "translation")


CODEC_RETRIES = 2                           # replays of a degradation draw whose codec stage raised (see degrade_pair)


def resolve_video(source: str) -> str:
    """A sample name ("bikes", "carphone", ...) -> its file; anything else is a path/URL."""
    from pipelines.common.samples import SAMPLE_VIDEOS, sample_video

    return sample_video(source) if source in SAMPLE_VIDEOS else source


def frame_split(n_frames: int, holdout: float) -> tuple[range, range]:
    """(training frames, held-out frames): the held-out ones are the last round(n*holdout) (>= 1)."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    n_hold = max(1, round(n_frames * holdout))
    if n_hold >= n_frames:
        raise ValueError(f"a video of {n_frames} frames cannot hold out {n_hold}: need at least 2 frames")
    return range(n_frames - n_hold), range(n_frames - n_hold, n_frames)


def load_frames(sources: Sequence[str], part: str, holdout: float, min_side: int = 0) -> list[tuple[str, np.ndarray]]:
    """[(source, (T, H, W, 3) uint8)] of each video's `part` ("train" or "heldout") frames."""
    from pipelines.common.video import VideoError, probe, read_frames

    if part not in ("train", "heldout"):
        raise ValueError(f"part must be 'train' or 'heldout', got {part!r}")
    out = []
    for source in sources:
        url = resolve_video(source)
        info = probe(url)
        if min(info.width, info.height) < min_side:
            raise VideoError(url, f"frames {info.width}x{info.height} are smaller than the {min_side} px "
                                  f"square a flow pair is cut from (crop * flow_scale); lower --crop or --flow-scale")
        train, held = frame_split(info.frames, holdout)
        frames = train if part == "train" else held
        out.append((source, read_frames(url, frames.start, len(frames))))
    return out


def pair_config(max_flow: float, flow_scale: int, motion: str = "layers"):
    """The FlowPairConfig a pair is made with at crop*flow_scale px (the loader's)."""
    from degrade import FlowPairConfig

    if motion == "layers":
        return FlowPairConfig(max_flow=max_flow * flow_scale)
    if motion == "translation":   # a pure camera shift: no layers, rotation, zoom or perspective
        return FlowPairConfig(max_flow=max_flow * flow_scale, camera_translation=1.0, camera_rotation=0.0,
                              camera_zoom=(1.0, 1.0), camera_perspective=0.0, layers=(0, 0))
    raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")


def _random_crop(videos: Sequence[tuple[str, np.ndarray]], rng: np.random.Generator, side: int,
                 flip: bool) -> torch.Tensor:
    """A random frame of a random video (uniform over all frames), random side x side crop, flip."""
    sizes = np.array([len(f) for _, f in videos])
    k = int(rng.integers(sizes.sum()))
    v = int(np.searchsorted(np.cumsum(sizes), k, side="right"))
    name, frames = videos[v]
    frame = frames[k - (sizes[:v].sum() if v else 0)]
    h, w = frame.shape[:2]
    if side > h or side > w:
        raise ValueError(f"{name}: frames {h}x{w} are smaller than the {side} px pair side")
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = frame[y:y + side, x:x + side]
    if flip and rng.random() < 0.5:
        crop = crop[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(crop)).float().div_(255.0).permute(2, 0, 1)


def clean_pair(videos: Sequence[tuple[str, np.ndarray]], index: int, seed: int, crop: int = 64,
               flow_scale: int = 2, max_flow: float = 24.0, motion: str = "layers", flip: bool = True):
    """Clean pair `index` at crop*flow_scale px: (img1, img2, flow, valid), from Generator (seed, index).
    Layers are cut from another random frame (the loader uses the previous sample's)."""
    rng = np.random.default_rng([seed, index, 0xF10])
    side = crop * flow_scale
    frame = _random_crop(videos, rng, side, flip)
    other = _random_crop(videos, rng, side, flip)
    from degrade import make_flow_pair

    return make_flow_pair(frame, other, pair_config(max_flow, flow_scale, motion), rng)


def degrade_pair(pair, preset_name: str, index: int, seed: int, flow_scale: int = 2):
    """Degrade a clean pair with one shared draw of `preset_name` at scale flow_scale, from
    Generator (seed, index, preset number): (img1, img2, flow, valid) at crop px."""
    import av

    from degrade import PRESETS, degrade_flow_pair, preset

    cfg = preset(preset_name, scale=flow_scale)
    for attempt in range(CODEC_RETRIES + 1):
        rng = np.random.default_rng([seed, index, PRESETS.index(preset_name), 0xDE6])
        try:
            img1, img2, flow, valid, _ = degrade_flow_pair(*pair, cfg, rng)
            return img1, img2, flow, valid
        except av.error.FFmpegError as exc:
            # Seen once in ~2000 heavy pairs: the codec stage's in-memory mux failed with EINVAL;
            # the same draw then went through when replayed, so retry the identical draw.
            if attempt == CODEC_RETRIES:
                raise
            warnings.warn(f"degrade_pair: pair {index}, preset {preset_name}: codec stage failed ({exc}); "
                          f"retrying the same draw", RuntimeWarning, stacklevel=2)
    raise AssertionError("unreachable")


def flow_pairs(videos: Sequence[tuple[str, np.ndarray]], count: int, seed: int, presets: Sequence[str],
               crop: int = 64, flow_scale: int = 2, max_flow: float = 24.0, motion: str = "layers",
               start: int = 0, flip: bool = True, progress: Callable[[int], None] | None = None
               ) -> dict[str, dict[str, torch.Tensor]]:
    """{preset: {"img1", "img2": (N, 3, c, c), "flow": (N, 2, c, c), "valid": (N, c, c) bool}}
    for pairs start..start+count-1, every preset degrading the same clean pairs."""
    if count < 1:
        raise ValueError(f"flow_pairs: count must be >= 1, got {count}")
    acc: dict[str, list] = {p: [] for p in presets}
    for i in range(start, start + count):
        clean = clean_pair(videos, i, seed, crop, flow_scale, max_flow, motion, flip)
        for p in presets:
            acc[p].append(degrade_pair(clean, p, i, seed, flow_scale))
        if progress is not None:
            progress(i - start + 1)
    return {p: {k: torch.stack(v) for k, v in zip(("img1", "img2", "flow", "valid"), zip(*pairs))}
            for p, pairs in acc.items()}

"""Shot-boundary (hard cut) detection, offline and streaming, on PyAV frames.

Score: PySceneDetect's `ContentDetector` score ("content_val"): the mean absolute
difference of the HSV channels between a frame and the previous one, averaged over H, S
and V, in 8-bit units (OpenCV's hue runs 0..179). The threshold therefore means what it
means in PySceneDetect (default 27). Two changes make it cheap and a little harder to fool:

- frames are box-downscaled first, by the largest integer factor that keeps the short side
  at least `analysis_size` px: on bikes.mp4 the cut scores at a 64 px short side are within
  1.5 units of full resolution (59.6 vs 59.9 at the strongest cut, 35.6 vs 37.1 at the
  weakest) for ~5x less time; ~1 ms a 640x272 frame;
- a cut also needs `score >= adaptive_ratio * mean(recent scores in the shot)`: sustained
  fast motion that hovers around the threshold does not fire, a cut stands out from the
  motion just before it (on bikes.mp4 the weakest true cut is 2.8x its preceding mean,
  the largest non-cut ratio 1.9 at a score of 19).

Both are causal, so `ShotDetector.push(frame)` answers at once whether the frame just
pushed starts a new shot: the restore job detects cuts while it decodes, and the shard
builder cuts clips in the same single decode pass.
"""
from __future__ import annotations

import collections
import itertools
import os
from collections.abc import Iterable

import cv2
import numpy as np

DEFAULT_THRESHOLD = 27.0     # PySceneDetect ContentDetector's default score threshold
DEFAULT_MIN_SHOT_LEN = 5     # frames (0.2 s at 25 fps): no cut closer than this to the last one


class ShotDetector:
    """Streaming hard-cut detector: feed frames in order with `push`.

    `push(frame)` returns True when `frame` is the first frame of a new shot (never for
    the first frame of the video). `cuts` lists those frame indices, `scores` every
    frame's score (0 for frame 0), `shots()` the shots so far as (start, end) ranges.
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, min_shot_len: int = DEFAULT_MIN_SHOT_LEN,
                 adaptive_ratio: float = 1.5, window: int = 8, analysis_size: int = 64):
        if threshold <= 0:
            raise ValueError(f"ShotDetector: threshold must be > 0, got {threshold}")
        if min_shot_len < 1:
            raise ValueError(f"ShotDetector: min_shot_len must be >= 1 frame, got {min_shot_len}")
        if window < 1 or analysis_size < 8 or adaptive_ratio < 0:
            raise ValueError(f"ShotDetector: bad window {window}, analysis_size {analysis_size} "
                             f"or adaptive_ratio {adaptive_ratio}")
        self.threshold = float(threshold)            # content score (8-bit HSV units) a cut must reach
        self.min_shot_len = int(min_shot_len)        # frames between two cuts, at least
        self.adaptive_ratio = float(adaptive_ratio)  # cut score / mean of the shot's recent scores, at least
        self.window = int(window)                    # recent scores (frames) in that mean
        self.analysis_size = int(analysis_size)      # px: frames are scored at a short side >= this (< 2x)
        self.reset()

    def reset(self) -> None:
        self.index = 0                               # frames pushed so far
        self.cuts: list[int] = []
        self.scores: list[float] = []
        self._prev: np.ndarray | None = None
        self._recent: collections.deque = collections.deque(maxlen=self.window)
        self._shot_start = 0

    def _hsv(self, frame: np.ndarray) -> np.ndarray:
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"ShotDetector.push: expected an (H, W, 3) uint8 RGB frame, got "
                             f"{getattr(frame, 'shape', type(frame).__name__)} {getattr(frame, 'dtype', '')}")
        h, w = frame.shape[:2]
        k = min(h, w) // self.analysis_size
        if k >= 2:   # box filter by an integer factor: OpenCV's fast INTER_AREA path (2.5x faster)
            frame = cv2.resize(frame[:h - h % k, :w - w % k], (w // k, h // k), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2HSV).astype(np.int16)

    def push(self, frame: np.ndarray) -> bool:
        """Score `frame` against the previous one; True if it starts a new shot."""
        hsv = self._hsv(frame)
        if self._prev is not None and self._prev.shape != hsv.shape:
            raise ValueError(f"ShotDetector.push: frame {self.index} has size {frame.shape[:2]}, "
                             f"unlike the frames before it")
        score = 0.0 if self._prev is None else float(np.abs(hsv - self._prev).mean())
        self._prev = hsv
        index, self.index = self.index, self.index + 1
        self.scores.append(score)
        recent = float(np.mean(self._recent)) if self._recent else 0.0
        cut = (index > 0 and score >= self.threshold and index - self._shot_start >= self.min_shot_len
               and score >= self.adaptive_ratio * recent)
        if cut:
            self.cuts.append(index)
            self._shot_start = index
            self._recent.clear()
        elif index > 0:
            self._recent.append(score)
        return cut

    def shots(self, total: int | None = None) -> list[tuple[int, int]]:
        """(start, end) ranges, end exclusive, covering frames 0..total (default: all pushed)."""
        return shots_from_cuts(self.cuts, self.index if total is None else total)


def shots_from_cuts(cuts: Iterable[int], frames: int) -> list[tuple[int, int]]:
    """Cut frame indices -> (start, end) ranges covering [0, frames), end exclusive."""
    if frames <= 0:
        return []
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < frames), frames]
    return [(a, b) for a, b in itertools.pairwise(bounds)]


def detect_shots(url_or_frames, threshold: float = DEFAULT_THRESHOLD, min_shot_len: int = DEFAULT_MIN_SHOT_LEN,
                 **detector_kwargs) -> list[tuple[int, int]]:
    """Shots of a video (a path/URL) or of frames ((T, H, W, 3) uint8 array or an iterable
    of (H, W, 3) uint8 frames), as (start, end) ranges, end exclusive, covering every frame.

    A URL is decoded streaming (one frame in memory); an unreadable video raises VideoError.
    """
    from pipelines.common import video

    detector = ShotDetector(threshold=threshold, min_shot_len=min_shot_len, **detector_kwargs)
    is_url = isinstance(url_or_frames, (str, os.PathLike))
    frames = video.iter_frames(os.fspath(url_or_frames)) if is_url else url_or_frames
    for frame in frames:
        detector.push(frame)
    return detector.shots()

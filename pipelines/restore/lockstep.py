"""Several frame streams restored in lockstep: frame t of each in one batch of the model.

A `Lane` is one stream of low-res frames restored in order (a whole video, or one segment
of a video): its recurrent state, its shot clock and where its shots start (a streaming
detector, or the starts a plan found). The state is reset at every shot start, and frame t
of a shot draws its noise from a generator seeded with `seed + t`, so a shot is restored
exactly as it would be as a video of its own.

`Lockstep.step()` takes the next frame of each of up to `batch` lanes, restores the frames
of one size together (`restorers.restore_batch`: one UNet call; the flow runs per lane) and
returns them; a lane whose stream ends makes room for the next waiting one. A lane whose
stream raises (a corrupt input) ends with that error; the others go on. With `batch` 1
this is the plain sequential restoration.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from models.timing import SectionTimer
from pipelines.common import video
from pipelines.restore.restorers import draw_noise, restore_batch


@dataclasses.dataclass
class StreamStats:
    frames: int = 0
    shot_starts: list[int] = dataclasses.field(default_factory=list)   # frame index of each shot's first frame


def detector_cuts(detector) -> Callable[[int, np.ndarray], bool]:
    """Shot starts as a streaming `ShotDetector` finds them (None: one shot)."""
    return (lambda i, frame: bool(detector.push(frame))) if detector is not None else (lambda i, frame: False)


def planned_cuts(starts: Iterable[int]) -> Callable[[int, np.ndarray], bool]:
    """Shot starts known in advance (frame indices within the lane)."""
    starts = set(int(s) for s in starts)
    return lambda i, frame: i in starts


@dataclasses.dataclass(eq=False)
class Lane:
    frames: Iterator[np.ndarray]                  # (H, W, 3) uint8 low-res frames, in order
    cuts: Callable[[int, np.ndarray], bool]       # does frame i of the lane start a shot? (frame 0 always does)
    seed: int = 0                                 # frame t of a shot: noise seed + t
    key: Any = None                               # the caller's handle (e.g. its output)
    stats: StreamStats = dataclasses.field(default_factory=StreamStats)
    stages: SectionTimer = dataclasses.field(default_factory=SectionTimer)
    error: Exception | None = None                # why the lane ended early
    state: Any = None                             # recurrent state (None: next frame starts a shot)
    t: int = 0                                    # frame index within the current shot
    generator: torch.Generator = dataclasses.field(default_factory=lambda: torch.Generator("cpu"))


class Lockstep:
    """Restore `lanes` with at most `batch` of them in flight; see the module docstring."""

    def __init__(self, lanes: Sequence[Lane], restorer, batch: int = 1, device: torch.device | str = "cpu"):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.waiting, self.active = list(lanes), []
        self.restorer, self.batch, self.device = restorer, batch, device

    @property
    def finished(self) -> bool:
        return not self.waiting and not self.active

    def step(self) -> tuple[list[tuple[Lane, np.ndarray]], list[Lane]]:
        """([(lane, restored (sH, sW, 3) uint8)] of one frame per running lane, [lanes that ended])."""
        ended: list[Lane] = []
        frames: list[tuple[Lane, np.ndarray]] = []
        self._admit()
        pending = list(self.active)
        while pending:                  # a lane that ends is replaced at once, in this same step
            for lane in pending:
                frame = self._next(lane)
                if frame is None:
                    self.active.remove(lane)
                    ended.append(lane)
                else:
                    frames.append((lane, frame))
            pending = self._admit()
        outputs: list[tuple[Lane, np.ndarray]] = []
        for group in _by_size(frames):
            outputs += self._restore(group, ended)
        return outputs, ended

    def _admit(self) -> list[Lane]:
        """Waiting lanes moved into the free slots."""
        admitted = []
        while len(self.active) < self.batch and self.waiting:
            admitted.append(self.waiting.pop(0))
            self.active.append(admitted[-1])
        return admitted

    def _next(self, lane: Lane) -> np.ndarray | None:
        """The lane's next frame (its shot clock advanced), or None at its end or on its error."""
        try:
            with lane.stages.section("decode"):
                frame = next(lane.frames, None)
            if frame is None:
                return None
            with lane.stages.section("shots"):
                cut = lane.cuts(lane.stats.frames, frame)
        except Exception as exc:  # noqa: BLE001 - a bad input ends its lane only
            lane.error = exc
            return None
        if cut or lane.stats.frames == 0:
            lane.state, lane.t = None, 0
            lane.stats.shot_starts.append(lane.stats.frames)
        return frame

    def _restore(self, group: list[tuple[Lane, np.ndarray]], ended: list[Lane]) -> list[tuple[Lane, np.ndarray]]:
        lanes = [lane for lane, _ in group]
        try:
            timer = SectionTimer()
            with timer.section("restore"):
                lqs = [video.to_float(frame)[None].to(self.device) for _, frame in group]   # (1, 3, H, W) each
                noises = [draw_noise(self.restorer, 1, lq.shape[-2], lq.shape[-1],
                                     lane.generator.manual_seed(lane.seed + lane.t)) for lane, lq in zip(lanes, lqs)]
                results = restore_batch(self.restorer, lqs, [lane.state for lane in lanes], noises)
                outs = [video.to_uint8(hr[0]) for hr, _ in results]                          # syncs the device
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: these lanes end, others go on
            for lane in lanes:
                lane.error = exc
                self.active.remove(lane)
                ended.append(lane)
            return []
        share = timer.seconds["restore"] / len(lanes)
        for lane, (_, state) in zip(lanes, results):
            lane.stages.seconds["restore"] = lane.stages.seconds.get("restore", 0.0) + share
            lane.state, lane.t = state, lane.t + 1
            lane.stats.frames += 1
        return list(zip(lanes, outs))


def _by_size(frames: list[tuple[Lane, np.ndarray]]) -> list[list[tuple[Lane, np.ndarray]]]:
    groups: dict[tuple, list] = {}
    for lane, frame in frames:
        groups.setdefault(frame.shape, []).append((lane, frame))
    return list(groups.values())


def restore_frames(frames: Iterable[np.ndarray], restorer, *, detector=None, seed: int = 0,
                   device: torch.device | str = "cpu", stats: StreamStats | None = None,
                   stages: SectionTimer | None = None) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 frames in order -> restored (s*H, s*W, 3) uint8 frames, one at a time
    (one lane; the state reset where `detector.push(frame)` says a shot starts)."""
    lane = Lane(iter(frames), detector_cuts(detector), seed, stats=stats if stats is not None else StreamStats(),
                stages=stages if stages is not None else SectionTimer())
    engine = Lockstep([lane], restorer, 1, device)
    while not engine.finished:
        outputs, ended = engine.step()
        for _, out in outputs:
            yield out
        for done in ended:
            if done.error is not None:
                raise done.error

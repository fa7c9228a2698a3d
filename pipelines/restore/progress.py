"""Progress across workers: frames done / expected, frames/s and the ETA, printed periodically."""
from __future__ import annotations

import contextlib
import datetime
import math
import threading
import time
from collections.abc import Callable, Iterator


class Progress:
    """Frames done / expected across workers; `line()` says frames/s and the ETA.

    Videos not yet probed are counted at the mean length of those probed so far.
    """

    def __init__(self, videos: int):
        self.videos, self.started, self.finished = videos, 0, 0
        self.frames_done, self.frames_known, self.t0 = 0, 0, time.time()

    def start_video(self, frames: int) -> None:
        self.started += 1
        self.frames_known += int(frames)

    def add_frames(self, n: int) -> None:
        self.frames_done += int(n)

    def end_video(self, expected: int, done: int) -> None:
        """`expected` = the probed frame count (0: failed before probing), `done` = restored."""
        self.finished += 1
        if expected <= 0:
            self.started += 1
        self.frames_known += int(done) - int(expected)  # a failure ends early

    def snapshot(self) -> dict:
        elapsed = max(time.time() - self.t0, 1e-9)
        per_video = self.frames_known / max(self.started, 1)
        total = self.frames_known + per_video * max(self.videos - self.started, 0)
        rate = self.frames_done / elapsed
        eta = (total - self.frames_done) / rate if rate > 0 else float("nan")
        return {"videos": self.videos, "finished": self.finished, "frames": self.frames_done,
                "frames_total": round(total), "fps": rate, "eta_s": eta, "elapsed_s": elapsed}


def progress_line(snap: dict) -> str:
    eta = "?" if not math.isfinite(snap["eta_s"]) else str(datetime.timedelta(seconds=int(snap["eta_s"])))
    return (f"[restore] {snap['finished']}/{snap['videos']} videos, {snap['frames']}/~{snap['frames_total']} "
            f"frames, {snap['fps']:.2f} frames/s, ETA {eta}, elapsed {snap['elapsed_s']:.0f} s")


class ThrottledProgress:
    """Worker side of a Ray progress actor: frame counts are sent at most once a second."""

    def __init__(self, actor, every_s: float = 1.0):
        self.actor, self.every_s, self.pending, self.last = actor, every_s, 0, time.time()

    def start_video(self, frames):
        self.actor.start_video.remote(frames)

    def add_frames(self, n):
        self.pending += n
        if time.time() - self.last >= self.every_s:
            self._flush()

    def end_video(self, expected, done):
        self._flush()
        self.actor.end_video.remote(expected, done)

    def _flush(self):
        if self.pending:
            self.actor.add_frames.remote(self.pending)
        self.pending, self.last = 0, time.time()


@contextlib.contextmanager
def printing(snapshot: Callable[[], dict], every_s: float) -> Iterator[None]:
    """Print a progress line every `every_s` seconds from a background thread."""
    stop = threading.Event()

    def loop():
        while not stop.wait(every_s):
            with contextlib.suppress(Exception):
                print(progress_line(snapshot()), flush=True)

    thread = threading.Thread(target=loop, name="restore-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)

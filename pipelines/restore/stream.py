"""Videos, or segments of one, as streams: decode -> shot starts -> restore with the recurrent
state -> encode.

`restore_items(items, restorer, cfg)` restores a list of items (whole videos, or segments that
`pipelines.restore.segments` planned) with `cfg.batch_shots` of them in lockstep
(`lockstep.Lockstep`: frame t of each in one UNet batch; every item gets exactly what it gets
alone) and returns one row per item; `restore_video` is one whole video. Each output appears
atomically, then its `.done` marker; a bad item never raises (its row says why) and never stops
the others. Memory is bounded whatever the length: one frame per item at a time.

A whole video finds its shots with the streaming detector as it decodes; a segment restores
frames [start, start + count) of its video with the shot starts its plan found (the same
detector over the same frames), so the frames equal those of the whole video restored at once.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import time
from collections.abc import Iterator

import numpy as np
import torch

from models.timing import SectionTimer
from pipelines.common import storage, video
from pipelines.restore.config import RestoreConfig
from pipelines.restore.lockstep import Lane, Lockstep, StreamStats, detector_cuts, planned_cuts, restore_frames
from pipelines.restore.restorers import Restorer

__all__ = ["DONE_SUFFIX", "StreamStats", "empty_row", "make_detector", "now_utc", "restore_frames",
           "restore_items", "restore_video"]

DONE_SUFFIX = ".done"


def make_detector(cfg: RestoreConfig):
    """A fresh streaming shot detector (`pipelines.data.shots.ShotDetector`) for one video."""
    from pipelines.data.shots import ShotDetector

    kwargs = {}
    if cfg.shot_threshold >= 0:
        kwargs["threshold"] = cfg.shot_threshold
    if cfg.min_shot_len >= 0:
        kwargs["min_shot_len"] = cfg.min_shot_len
    return ShotDetector(**kwargs)


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def empty_row(source: str, output: str, relpath: str = "", source_size: int = -1, model: str = "",
              source_version: str = "") -> dict:
    """A manifest row; every column always present with one type (parquet-friendly).
    `source_version` is the input's content identity (`storage.source_version`) that resume checks."""
    return {"source": source, "relpath": relpath, "output": output, "status": "failed",
            "source_version": source_version,
            "frames": 0, "shots": 0, "width": 0, "height": 0, "out_width": 0, "out_height": 0,
            "fps": "", "has_audio": False, "seconds": 0.0, "frames_per_s": 0.0, "error": "",
            "error_kind": "", "source_size": int(source_size), "output_size": -1, "model": model,
            "tiles": 0, "worker": f"{socket.gethostname()}:{os.getpid()}", "finished_at": "",
            "decode_s": 0.0, "shots_s": 0.0, "restore_s": 0.0, "encode_s": 0.0, "io_s": 0.0,
            "flow_s": 0.0, "unet_s": 0.0, "vae_s": 0.0, "segments": 0, "segments_reused": 0,
            "segment": ""}


def restore_video(source: str, output: str, restorer: Restorer, cfg: RestoreConfig, *,
                  relpath: str = "", source_size: int = -1, device: torch.device | str = "cpu",
                  progress=None, source_version: str = "") -> dict:
    """Restore one video to `output` (atomic) + `<output>.done`; returns its manifest row.

    Never raises for a bad video: the row says `failed`, the reason, and whether the input
    itself is unreadable (`error_kind` "input", not retried by default) or not ("internal").
    """
    item = {"source": source, "output": output, "relpath": relpath, "source_size": source_size,
            "source_version": source_version}
    return restore_items([item], restorer, cfg, device=device, progress=progress)[0]


def restore_items(items: list[dict], restorer: Restorer, cfg: RestoreConfig, *,
                  device: torch.device | str = "cpu", progress=None) -> list[dict]:
    """One row per item (`source`, `output`, `relpath`, `source_size`, `source_version`, and for
    a segment `segment`: its plan as JSON, see `segments.segment_items`), in order."""
    jobs = [_Job(item, cfg, progress) for item in items]
    before = _sections(restorer)
    lanes = [lane for lane in (job.open() for job in jobs) if lane is not None]
    engine = Lockstep(lanes, restorer, cfg.batch_shots, device)
    while not engine.finished:
        outputs, ended = engine.step()
        for lane, hr in outputs:
            lane.key.write(hr)
        for lane in ended:
            lane.key.finish(lane, tiles=int(getattr(restorer, "tiles_last_frame", 1)))
    after, frames = _sections(restorer), max(1, sum(job.stats.frames for job in jobs))
    for job in jobs:                      # the model's sections, shared in proportion to the frames
        for name in ("flow", "unet", "vae"):
            job.row[f"{name}_s"] = float(after.get(name, 0.0) - before.get(name, 0.0)) * job.stats.frames / frames
    return [job.row for job in jobs]


class _Job:
    """One item in flight: its input on local disk, its encoder and its row."""

    def __init__(self, item: dict, cfg: RestoreConfig, progress):
        self.cfg, self.progress, self.item = cfg, progress, item
        self.row = empty_row(item["source"], item["output"], item.get("relpath", ""), item.get("source_size", -1),
                             cfg.model, item.get("source_version", ""))
        self.segment = json.loads(item["segment"]) if item.get("segment") else None
        self.row["segment"] = item.get("segment", "")
        self.stages, self.stats = SectionTimer(), StreamStats()
        self.stack = contextlib.ExitStack()
        self.start, self.expected, self.writer = time.perf_counter(), 0, None

    def open(self) -> Lane | None:
        """The item's lane, or None when it failed already (probe, unreadable input)."""
        source, stack = self.item["source"], self.stack
        try:
            # 1. The input, once on local disk (S3: one download; probe, frames and audio read it).
            with self.stages.section("io"):
                local = stack.enter_context(storage.local_copy(source))
            info = _probe_input(local, source)
            self.row.update(frames=info.frames, width=info.width, height=info.height, fps=info.fps_fraction,
                            has_audio=info.has_audio)
            if self.segment is None:
                first, count, self.expected = 0, None, info.frames
                cuts = detector_cuts(make_detector(self.cfg))
                audio = local if info.has_audio else None
            else:                          # audio is muxed once, when the segments are joined
                first, count = self.segment["start"], self.segment["count"]
                self.expected = count
                cuts, audio = planned_cuts(self.segment["starts"]), None
                self.row["frames"] = self.expected
            if self.progress is not None:
                self.progress.start_video(self.expected)
            frames = _input_errors(video.iter_frames(local, start=first, count=count, expected=info.frames),
                                   source)
            self.writer = video.VideoWriter(self.item["output"], fps=info.fps_fraction, crf=self.cfg.crf,
                                            codec=self.cfg.codec, preset=self.cfg.preset, audio_from=audio,
                                            pix_fmt=self.cfg.pix_fmt or None)
            stack.callback(self.writer.abort)          # a no-op after close; cleans up after an error
        except Exception as exc:  # noqa: BLE001 - one bad video must not stop the archive
            self._failed(exc)
            return None
        return Lane(frames, cuts, self.cfg.seed, key=self, stats=self.stats, stages=self.stages)

    def write(self, hr: np.ndarray) -> None:
        with self.stages.section("encode"):
            self.writer.write(hr)
        if self.progress is not None:
            self.progress.add_frames(1)
        self.row["out_height"], self.row["out_width"] = hr.shape[:2]

    def finish(self, lane: Lane, tiles: int = 1) -> None:
        try:
            if lane.error is not None:
                raise lane.error
            if self.writer.frames_written != self.expected:
                raise _InputError(video.VideoError(self.item["source"], f"decoded {self.writer.frames_written} of "
                                                                        f"{self.expected} frames"))
            with self.stages.section("encode"):        # flush + audio copy + atomic upload
                self.writer.close()
            # 3. The output is complete and visible; the marker says so (written after it).
            row = self.row
            row.update(status="done", shots=len(self.stats.shot_starts), output_size=storage.size(row["output"]),
                       tiles=tiles)
            marker = {k: row[k] for k in ("source", "output", "frames", "shots", "source_size", "source_version",
                                          "output_size", "fps", "has_audio", "model", "out_width", "out_height")}
            storage.write_text(row["output"] + DONE_SUFFIX, json.dumps(marker, indent=1))
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
        self._close()

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, _InputError):
            self.row.update(status="failed", error=str(exc.error), error_kind="input")
        else:
            self.row.update(status="failed", error=f"{exc.__class__.__name__}: {exc}"[:2000], error_kind="internal")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if self.writer is None:            # never opened: no lane will finish it
            self._close()

    def _close(self) -> None:
        self.stack.close()
        if self.progress is not None:
            self.progress.end_video(self.expected, self.stats.frames)
        seconds = time.perf_counter() - self.start
        self.row.update(seconds=seconds, frames_per_s=self.stats.frames / seconds if seconds > 0 else 0.0,
                        finished_at=now_utc())
        for name in ("decode", "shots", "restore", "encode", "io"):
            self.row[f"{name}_s"] = float(self.stages.seconds.get(name, 0.0))


def _sections(restorer) -> dict[str, float]:
    """Cumulative flow / unet / vae seconds of a diffusion restorer (under any wrappers)."""
    while not hasattr(restorer, "section_seconds") and hasattr(restorer, "inner"):
        restorer = restorer.inner
    return dict(restorer.section_seconds()) if hasattr(restorer, "section_seconds") else {}


class _InputError(Exception):
    """The input video itself is unreadable (wraps the VideoError naming it)."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _probe_input(local: str, source: str) -> video.VideoInfo:
    try:
        return video.probe(local)
    except video.VideoError as exc:
        raise _InputError(video.VideoError(source, exc.reason)) from exc


def _input_errors(frames: Iterator[np.ndarray], source: str) -> Iterator[np.ndarray]:
    """Re-raise decode errors of the input as input errors naming the source URL."""
    try:
        yield from frames
    except video.VideoError as exc:
        raise _InputError(video.VideoError(source, exc.reason)) from exc

"""One video as a stream: decode -> shot detector -> restore with the recurrent state -> encode.

`restore_video` restores one video (atomically, then its `.done` marker) and returns its
manifest row; it never raises for a bad video (the row says why). Memory is bounded
whatever the length: one frame at a time.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from models.timing import SectionTimer
from pipelines.common import storage, video
from pipelines.restore.config import RestoreConfig
from pipelines.restore.restorers import Restorer, draw_noise

DONE_SUFFIX = ".done"


@dataclasses.dataclass
class StreamStats:
    frames: int = 0
    shot_starts: list[int] = dataclasses.field(default_factory=list)   # frame index of each shot's first frame


def make_detector(cfg: RestoreConfig):
    """A fresh streaming shot detector (`pipelines.data.shots.ShotDetector`) for one video."""
    from pipelines.data.shots import ShotDetector

    kwargs = {}
    if cfg.shot_threshold >= 0:
        kwargs["threshold"] = cfg.shot_threshold
    if cfg.min_shot_len >= 0:
        kwargs["min_shot_len"] = cfg.min_shot_len
    return ShotDetector(**kwargs)


def restore_frames(frames: Iterable[np.ndarray], restorer: Restorer, *, detector=None, seed: int = 0,
                   device: torch.device | str = "cpu", stats: StreamStats | None = None,
                   stages: SectionTimer | None = None) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 frames in order -> restored (s*H, s*W, 3) uint8 frames, one at a time.

    The recurrent state is reset where `detector.push(frame)` says a shot starts (and at
    frame 0); frame t of a shot draws its noise from a generator seeded with `seed + t`,
    so a shot is restored exactly as it would be as a video of its own.
    """
    stats = stats if stats is not None else StreamStats()
    stages = stages if stages is not None else SectionTimer()
    generator = torch.Generator("cpu")
    state, t, it = None, 0, iter(frames)
    while True:
        with stages.section("decode"):
            frame = next(it, None)
        if frame is None:
            return
        with stages.section("shots"):
            cut = bool(detector.push(frame)) if detector is not None else False
        if cut or stats.frames == 0:
            state, t = None, 0
            stats.shot_starts.append(stats.frames)
        with stages.section("restore"):
            lq = video.to_float(frame)[None].to(device)                      # (1, 3, H, W)
            noise = draw_noise(restorer, 1, lq.shape[-2], lq.shape[-1], generator.manual_seed(seed + t))
            hr, state = restorer.restore_frame(lq, state, noise)             # (1, 3, sH, sW)
            out = video.to_uint8(hr[0])                                      # syncs the device
        t += 1
        stats.frames += 1
        yield out


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
            "flow_s": 0.0, "unet_s": 0.0, "vae_s": 0.0}


def restore_video(source: str, output: str, restorer: Restorer, cfg: RestoreConfig, *,
                  relpath: str = "", source_size: int = -1, device: torch.device | str = "cpu",
                  progress=None, source_version: str = "") -> dict:
    """Restore one video to `output` (atomic) + `<output>.done`; returns its manifest row.

    Never raises for a bad video: the row says `failed`, the reason, and whether the input
    itself is unreadable (`error_kind` "input", not retried by default) or not ("internal").
    """
    row = empty_row(source, output, relpath, source_size, cfg.model, source_version)
    stages, stats = SectionTimer(), StreamStats()
    start = time.perf_counter()
    before, expected = _sections(restorer), 0
    try:
        with contextlib.ExitStack() as stack:
            # 1. The input, once on local disk (S3: one download; probe, frames and audio read it).
            with stages.section("io"):
                local = stack.enter_context(storage.local_copy(source))
            info = _probe_input(local, source)
            expected = info.frames
            row.update(frames=info.frames, width=info.width, height=info.height, fps=info.fps_fraction,
                       has_audio=info.has_audio)
            if progress is not None:
                progress.start_video(info.frames)
            # 2. decode -> shots -> restore -> encode, one frame at a time.
            frames = _input_errors(video.iter_frames(local, expected=info.frames), source)
            writer = video.VideoWriter(output, fps=info.fps_fraction, crf=cfg.crf, codec=cfg.codec,
                                       preset=cfg.preset, audio_from=local if info.has_audio else None,
                                       pix_fmt=cfg.pix_fmt or None)
            stack.callback(writer.abort)          # a no-op after close; cleans up after an error
            for hr in restore_frames(frames, restorer, detector=make_detector(cfg), seed=cfg.seed,
                                     device=device, stats=stats, stages=stages):
                with stages.section("encode"):
                    writer.write(hr)
                if progress is not None:
                    progress.add_frames(1)
                row["out_height"], row["out_width"] = hr.shape[:2]
            if writer.frames_written != info.frames:
                raise _InputError(video.VideoError(source, f"decoded {writer.frames_written} of "
                                                           f"{info.frames} frames"))
            with stages.section("encode"):                # flush + audio copy + atomic upload
                writer.close()
        # 3. The output is complete and visible; the marker says so (written after it).
        row.update(status="done", shots=len(stats.shot_starts), output_size=storage.size(output),
                   tiles=int(getattr(restorer, "tiles_last_frame", 1)))
        marker = {k: row[k] for k in ("source", "output", "frames", "shots", "source_size", "source_version",
                                      "output_size", "fps", "has_audio", "model", "out_width", "out_height")}
        storage.write_text(output + DONE_SUFFIX, json.dumps(marker, indent=1))
    except _InputError as exc:
        row.update(status="failed", error=str(exc.error), error_kind="input")
    except Exception as exc:  # noqa: BLE001 - one bad video must not stop the archive
        row.update(status="failed", error=f"{exc.__class__.__name__}: {exc}"[:2000], error_kind="internal")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    finally:
        if progress is not None:
            progress.end_video(expected, stats.frames)
    seconds = time.perf_counter() - start
    after = _sections(restorer)
    row.update(seconds=seconds, frames_per_s=stats.frames / seconds if seconds > 0 else 0.0, finished_at=now_utc())
    for name in ("decode", "shots", "restore", "encode", "io"):
        row[f"{name}_s"] = float(stages.seconds.get(name, 0.0))
    for name in ("flow", "unet", "vae"):
        row[f"{name}_s"] = float(after.get(name, 0.0) - before.get(name, 0.0))
    return row


def _sections(restorer) -> dict[str, float]:
    """Cumulative flow / unet / vae seconds of a (possibly tiled) diffusion restorer."""
    inner = getattr(restorer, "inner", restorer)
    return dict(inner.section_seconds()) if hasattr(inner, "section_seconds") else {}


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

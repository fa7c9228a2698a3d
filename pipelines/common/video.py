"""Video I/O on PyAV: probe, streaming decode, H.264 encode with audio carried over.

Frames at this boundary are `(H, W, 3)` uint8 RGB numpy arrays, upright (rotation
metadata applied). Decoding streams: at most one chunk is held in memory. Any file that
cannot be read as a video (missing, empty, truncated, not a video, corrupt) raises
`VideoError`, which names the file and the reason.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fractions
import os
import tempfile
from typing import Iterator

import av
import numpy as np

from pipelines.common import storage

# File endings taken as videos (lower case; compare case-insensitively): what shards are built
# from, what an archive restore picks up and what the report finds. The one list.
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".y4m", ".wmv",
                    ".flv")


class VideoError(Exception):
    """A video that cannot be read or written; names the file and the reason."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    path: str
    frames: int             # number of video frames (counted from packets when unknown)
    fps: float              # average frame rate (frames per second)
    fps_fraction: str       # exact rate, e.g. "30000/1001", for re-encoding
    width: int              # upright width (after rotation)
    height: int             # upright height (after rotation)
    duration: float         # seconds
    codec: str              # e.g. "h264"
    rotation: int           # display rotation in degrees counter-clockwise (0/90/180/270)
    has_audio: bool
    audio_codec: str | None
    variable_frame_rate: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _open(path: str) -> av.container.InputContainer:
    if not os.path.exists(path):
        raise VideoError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "empty file (0 bytes)")
    try:
        container = av.open(path, mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise VideoError(path, f"not a readable video container ({exc.__class__.__name__}: {exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(path, "no video stream")
    return container


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, k=k)) if k else image


def _frame_rotation(frame: av.VideoFrame) -> int:
    rot = int(round(getattr(frame, "rotation", 0) or 0))
    return rot % 360


def probe(url: str) -> VideoInfo:
    """Read a video's properties without decoding it all (packets are counted if needed)."""
    with storage.local_copy(url) as path:
        container = _open(path)
        try:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate:
                raise VideoError(url, "no frame rate in the video stream")
            # Demux without decoding: the container's frame count can be missing or
            # wrong, packets are exact, and their timestamps reveal variable frame rate.
            timestamps = []
            try:
                for packet in container.demux(stream):
                    if packet.size and packet.pts is not None:
                        timestamps.append(packet.pts)
            except av.error.FFmpegError as exc:
                raise VideoError(url, f"corrupt stream while reading packets ({exc})") from exc
            frames = len(timestamps)
            if frames == 0:
                raise VideoError(url, "video stream has no frames")
            declared = int(stream.frames or 0)   # MP4/MOV: the sample table's count; 0 where unknown
            if frames < declared:                # cut at a packet boundary: demuxes cleanly, but shorter
                raise VideoError(url, f"truncated: {frames} of the {declared} frames its container declares")
            deltas = np.diff(np.sort(np.array(timestamps, dtype=np.int64))) if len(timestamps) > 2 else np.array([])
            vfr = bool(deltas.size and (deltas.max() - deltas.min()) > max(1, 0.1 * np.median(deltas)))
            container.seek(0)
            rotation = 0
            try:
                first = next(container.decode(stream))
                rotation = _frame_rotation(first)
            except (StopIteration, av.error.FFmpegError) as exc:
                raise VideoError(url, f"first frame cannot be decoded ({exc})") from exc
            w, h = stream.codec_context.width, stream.codec_context.height
            if rotation in (90, 270):
                w, h = h, w
            duration = float(container.duration / av.time_base) if container.duration else frames / float(rate)
            audio = container.streams.audio[0] if container.streams.audio else None
            return VideoInfo(
                path=str(url), frames=frames, fps=float(rate), fps_fraction=str(fractions.Fraction(rate)),
                width=w, height=h, duration=duration, codec=stream.codec_context.name, rotation=rotation,
                has_audio=audio is not None, audio_codec=audio.codec_context.name if audio else None,
                variable_frame_rate=vfr,
            )
        finally:
            container.close()


def iter_frames(url: str, start: int = 0, count: int | None = None, expected: int | None = None) -> Iterator[np.ndarray]:
    """Yield upright `(H, W, 3)` uint8 frames `start, start+1, ...` one at a time.

    Frames are counted in presentation order from the first; a `start` > 0 seeks
    (`_decoded`: exact, or decoding from the first frame where seeking cannot be). If
    `expected` (e.g. `probe().frames`) is given and the stream ends early, the file is
    truncated and `VideoError` is raised.
    """
    if start < 0 or (count is not None and count < 0):
        raise ValueError(f"start and count must be >= 0, got {start}, {count}")
    with storage.local_copy(url) as path:
        container = _open(path)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            index = 0
            try:
                for index, frame in _decoded(container, stream, start):
                    if count is not None and index >= start + count:
                        return
                    if index >= start:
                        yield _upright(frame.to_ndarray(format="rgb24"), _frame_rotation(frame))
                index += 1
            except av.error.FFmpegError as exc:
                raise VideoError(url, f"decoding failed at frame {index} ({exc})") from exc
            if index == 0:
                raise VideoError(url, "no frame could be decoded")
            if expected is not None and index < expected and (count is None or index < start + count):
                raise VideoError(url, f"truncated: decoded {index} of {expected} frames")
        finally:
            container.close()


def _decoded(container, stream, start: int) -> Iterator[tuple[int, av.VideoFrame]]:
    """(index, frame) in presentation order, from frame `start` where seeking is exact, else from 0.

    Seeking: the demuxed packets' time stamps (no decoding) give frame `start`'s; the decoder
    starts at the key frame before it and skips to it. The first frame kept must carry exactly
    that time stamp; where it does not (or a frame has none), the video is decoded from its
    first frame instead, so the frames are the same either way, only slower.
    """
    if start > 0:
        stamps = sorted(p.pts for p in container.demux(stream) if p.size and p.pts is not None)
        found = False
        if start < len(stamps):
            target = stamps[start]
            container.seek(target, stream=stream, backward=True, any_frame=False)
            index = start
            for frame in container.decode(stream):
                if not found:
                    if frame.pts is None or frame.pts > target:
                        break
                    if frame.pts < target:
                        continue
                    found = True
                yield index, frame
                index += 1
        if found:
            return
        container.seek(0)
    for index, frame in enumerate(container.decode(stream)):
        yield index, frame


def iter_chunks(url: str, chunk: int = 16, start: int = 0, count: int | None = None,
                expected: int | None = None) -> Iterator[np.ndarray]:
    """Yield `(T, H, W, 3)` uint8 chunks of at most `chunk` frames."""
    buffer: list[np.ndarray] = []
    for frame in iter_frames(url, start=start, count=count, expected=expected):
        buffer.append(frame)
        if len(buffer) == chunk:
            yield np.stack(buffer)
            buffer = []
    if buffer:
        yield np.stack(buffer)


def read_frames(url: str, start: int = 0, count: int | None = None) -> np.ndarray:
    """`(T, H, W, 3)` uint8: a whole range in memory (for short clips only)."""
    frames = list(iter_frames(url, start=start, count=count))
    return np.stack(frames)


class VideoWriter:
    """Streaming H.264 (or any PyAV codec) writer; the file appears atomically on close.

    Audio from `audio_from` (a video or audio file) is copied packet by packet without
    re-encoding. Even sizes use yuv420p (plays everywhere); odd sizes use yuv444p so the
    exact frame size is kept. Use as a context manager; on an exception nothing is
    written at `url`.
    """

    def __init__(self, url: str, fps: float | str | fractions.Fraction, crf: int = 18,
                 codec: str = "libx264", preset: str = "medium", audio_from: str | None = None,
                 pix_fmt: str | None = None):
        self.url = str(url)
        self.rate = fractions.Fraction(str(fps)).limit_denominator(100000)
        self.crf, self.codec, self.preset, self.audio_from, self.pix_fmt = crf, codec, preset, audio_from, pix_fmt
        suffix = os.path.splitext(self.url)[1] or ".mp4"
        self._tmpdir = tempfile.TemporaryDirectory(prefix="d2vr-enc-", dir=storage.temp_root())
        self._tmp = os.path.join(self._tmpdir.name, f"out{suffix}")
        self._container = av.open(self._tmp, mode="w")
        self._stream = None
        self.frames_written = 0
        self._audio_src = self._audio_local = self._audio_in = None

    def _add_video_stream(self, height: int, width: int) -> None:
        stream = self._container.add_stream(self.codec, rate=self.rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = self.pix_fmt or ("yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p")
        options = {"preset": self.preset} if self.codec in ("libx264", "libx265") else {}
        if self.codec in ("libx264", "libx265", "libvpx-vp9", "libsvtav1"):
            options["crf"] = str(self.crf)
        stream.options = options
        stream.time_base = 1 / self.rate
        self._stream = stream
        if self.audio_from:
            self._add_audio_stream()

    def write(self, frame: np.ndarray) -> None:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"{self.url}: frames must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
        if self._stream is None:
            self._add_video_stream(*frame.shape[:2])
        elif (frame.shape[0], frame.shape[1]) != (self._stream.height, self._stream.width):
            raise ValueError(f"{self.url}: frame size {frame.shape[:2]} differs from the first frame's")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.frames_written
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames_written += 1

    def _add_audio_stream(self) -> None:
        """Declare the audio stream before the first packet is muxed (the container
        header is written then); its packets are copied in `close`."""
        self._audio_local = contextlib.ExitStack()
        path = self._audio_local.enter_context(storage.local_copy(self.audio_from))
        try:
            self._audio_src = av.open(path)
        except av.error.FFmpegError as exc:
            raise VideoError(self.audio_from, f"audio source unreadable ({exc})") from exc
        self._audio_in = self._audio_src.streams.audio[0] if self._audio_src.streams.audio else None
        if self._audio_in is not None:
            self._audio_out = self._container.add_stream_from_template(self._audio_in)

    def _copy_audio(self) -> None:
        if self._audio_in is not None:
            for packet in self._audio_src.demux(self._audio_in):
                if packet.dts is None:
                    continue
                packet.stream = self._audio_out
                self._container.mux(packet)
        self._close_audio_source()

    def _close_audio_source(self) -> None:
        if self._audio_src is not None:
            self._audio_src.close()
            self._audio_src = None
        if self._audio_local is not None:
            self._audio_local.close()
            self._audio_local = None

    def close(self) -> None:
        if self._stream is None:
            self.abort()
            raise VideoError(self.url, "no frames were written")
        for packet in self._stream.encode():
            self._container.mux(packet)
        if self._audio_src is not None:
            self._copy_audio()
        self._container.close()
        storage.upload_file(self._tmp, self.url)
        self._tmpdir.cleanup()

    def abort(self) -> None:
        self._close_audio_source()
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - best effort cleanup of a failed encode
            pass
        self._tmpdir.cleanup()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(url: str, frames, fps, crf: int = 18, codec: str = "libx264",
                audio_from: str | None = None, preset: str = "medium") -> int:
    """Encode an iterable of `(H, W, 3)` uint8 frames; returns the frame count."""
    with VideoWriter(url, fps, crf=crf, codec=codec, audio_from=audio_from, preset=preset) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.frames_written


def concat_videos(parts: list[str], url: str, audio_from: str | None = None) -> int:
    """Join videos encoded alike (same codec, size, settings: e.g. segments of one restoration)
    into `url` without re-encoding: their packets in order, time stamps shifted; audio from
    `audio_from` copied once. Atomic like `VideoWriter`. Returns the frame count."""
    if not parts:
        raise ValueError("concat_videos: no parts")
    suffix = os.path.splitext(str(url))[1] or ".mp4"
    with contextlib.ExitStack() as stack:
        tmpdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="d2vr-cat-", dir=storage.temp_root()))
        tmp = os.path.join(tmpdir, f"out{suffix}")
        inputs = [_open(stack.enter_context(storage.local_copy(p))) for p in parts]
        for container in inputs:
            stack.callback(container.close)
        first = inputs[0].streams.video[0]
        audio = None
        if audio_from:
            audio = _open(stack.enter_context(storage.local_copy(audio_from)))
            stack.callback(audio.close)
        out = av.open(tmp, mode="w")
        stack.callback(out.close)
        vout = out.add_stream_from_template(first)
        aout = aud = None
        if audio is not None and audio.streams.audio:
            aud = audio.streams.audio[0]
            aout = out.add_stream_from_template(aud)
        offset, frames = 0, 0                        # in the parts' time base
        for part, container in zip(parts, inputs):
            stream = container.streams.video[0]
            ctx, ref = stream.codec_context, first.codec_context
            if (stream.time_base != first.time_base or ctx.extradata != ref.extradata
                    or (ctx.width, ctx.height, ctx.name) != (ref.width, ref.height, ref.name)):
                raise VideoError(part, "encoded unlike the first part (codec, size, time base or "
                                       "parameter sets differ): cannot be joined without re-encoding")
            end = offset
            for packet in container.demux(stream):
                if packet.dts is None:               # the demuxer's flush packet
                    continue
                packet.pts += offset
                packet.dts += offset
                end = max(end, packet.pts + (packet.duration or 0))
                frames += 1
                packet.stream = vout
                out.mux(packet)
            offset = end
        if aout is not None:
            for packet in audio.demux(aud):
                if packet.dts is None:
                    continue
                packet.stream = aout
                out.mux(packet)
        out.close()
        storage.upload_file(tmp, url)
    return frames


def to_float(frames: np.ndarray):
    """uint8 `(..., H, W, 3)` -> float32 torch `(..., 3, H, W)` in [0, 1]."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255.0)
    return t.movedim(-1, -3)


def to_uint8(frames) -> np.ndarray:
    """float torch `(..., 3, H, W)` in [0, 1] -> uint8 numpy `(..., H, W, 3)` (`degrade.ops.to_uint8`)."""
    from degrade.ops import to_uint8 as convert

    return convert(frames)

"""Video-codec round trip in memory (PyAV, io.BytesIO): the RealBasicVSR/VideoLQ stage.

The clip is encoded as yuv420p with libx264, libx265 or mpeg4 at a constant quality
(x264/x265 CRF, mpeg4 fixed quantiser via qmin = qmax) or a target bitrate, muxed into
Matroska in memory, and decoded back. yuv420p needs even sizes: odd sides are padded by
repeating the last row/column and cropped back after decoding. Encoders run single-threaded
so the output is deterministic (replayable bit for bit).

libx265 (the build PyAV bundles) is not safe on small pictures: at 64x64, 40x40 or 32x32 it
gives run-to-run different output and sometimes corrupts the heap (glibc aborts with
"free(): invalid next size"). Frames for it are edge-padded to at least 128x128, where it
was found stable; the padding is cropped away after decoding.
"""
from __future__ import annotations

import io

import av
import numpy as np
import torch

# Smallest side given to each encoder (px); smaller frames are edge-padded, then cropped back.
MIN_SIDE = {"libx264": 16, "mpeg4": 16, "libx265": 128}  # 16: one macroblock; 128: see above


def _pad(frames: np.ndarray, min_side: int) -> np.ndarray:
    _, h, w, _ = frames.shape
    ph = max(h + (h % 2), min_side) - h
    pw = max(w + (w % 2), min_side) - w
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames


def _open_stream(container, params: dict, width: int, height: int):
    codec = params["codec"]
    stream = container.add_stream(codec, rate=int(params.get("fps", 25)))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    options = {}
    if codec in ("libx264", "libx265"):
        options["preset"] = params.get("preset", "veryfast")
        if "crf" in params:
            options["crf"] = str(params["crf"])
    if codec == "libx264":
        options["threads"] = "1"
    elif codec == "libx265":
        options["x265-params"] = "log-level=none:pools=1:frame-threads=1"
    elif codec == "mpeg4" and "qscale" in params:
        stream.codec_context.qmin = stream.codec_context.qmax = int(params["qscale"])
    elif codec != "mpeg4":
        raise ValueError(f"unknown codec {codec!r}; choose from libx264, libx265, mpeg4")
    if "bitrate" in params:
        stream.bit_rate = int(params["bitrate"])
    stream.codec_context.options = options
    stream.thread_count = 1
    return stream


def roundtrip_uint8(frames: np.ndarray, params: dict, attempts: int = 3) -> tuple[np.ndarray, int]:
    """Encode (T, H, W, 3) uint8 RGB and decode it back; returns (frames, encoded bytes).

    The bundled FFmpeg's muxer has, rarely and not reproducibly, refused a packet with
    EINVAL (seen once in ~1000 clips); the same settings succeed when tried again, and
    the encoders are deterministic, so a retry gives the same result."""
    for attempt in range(attempts):
        try:
            return _roundtrip_once(frames, params)
        except av.error.ArgumentError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _roundtrip_once(frames: np.ndarray, params: dict) -> tuple[np.ndarray, int]:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"codec round trip expects (T, H, W, 3) uint8, got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if params.get("codec") not in MIN_SIDE:
        raise ValueError(f"unknown codec {params.get('codec')!r}; choose from {sorted(MIN_SIDE)}")
    padded = _pad(frames, MIN_SIDE[params["codec"]])
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="matroska") as out:
        stream = _open_stream(out, params, padded.shape[2], padded.shape[1])
        for i, frame in enumerate(padded):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    size = buf.tell()
    buf.seek(0)
    with av.open(buf, mode="r") as inp:
        decoded = [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]
    if len(decoded) != t:
        raise RuntimeError(f"codec {params['codec']} returned {len(decoded)} frames for {t}")
    return np.stack(decoded)[:, :h, :w], size


def roundtrip(clip: torch.Tensor, params: dict) -> torch.Tensor:
    """Codec round trip of a clip (T, 3, H, W) in [0, 1] (8-bit levels), any device.

    Runs on CPU; the result is returned on the clip's device as float32 8-bit levels.
    """
    u8 = torch.round(clip.detach().clamp(0, 1) * 255.0).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    back, _ = roundtrip_uint8(u8, params)
    return torch.from_numpy(back).permute(0, 3, 1, 2).to(device=clip.device, dtype=torch.float32) / 255.0

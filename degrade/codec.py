"""Video-codec round trip in memory (PyAV encoder -> decoder): the RealBasicVSR/VideoLQ stage.

The clip is encoded as yuv420p with libx264, libx265 or mpeg4 at a constant quality
(x264/x265 CRF, mpeg4 fixed quantiser via qmin = qmax) or a target bitrate, and decoded
back in memory, packet by packet. yuv420p needs even sizes: odd sides are padded by
repeating the last row/column and cropped back after decoding. Encoders run single-threaded
so the output is deterministic (replayable bit for bit).

libx265 (the build PyAV bundles) is not safe on small pictures: at 64x64, 40x40 or 32x32 it
gives run-to-run different output and sometimes corrupts the heap (glibc aborts with
"free(): invalid next size"). Frames for it are edge-padded to at least 128x128, where it
was found stable; the padding is cropped away after decoding.
"""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import torch

from degrade.ops import to_uint8

# Smallest side given to each encoder (px); smaller frames are edge-padded, then cropped back.
MIN_SIDE = {"libx264": 16, "mpeg4": 16, "libx265": 128}  # 16: one macroblock; 128: see above


def _pad(frames: np.ndarray, min_side: int) -> np.ndarray:
    _, h, w, _ = frames.shape
    ph = max(h + (h % 2), min_side) - h
    pw = max(w + (w % 2), min_side) - w
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames


GLOBAL_HEADER = 1 << 22                  # AV_CODEC_FLAG_GLOBAL_HEADER
# FFmpeg decoder for each encoder's bitstream.
DECODER = {"libx264": "h264", "libx265": "hevc", "mpeg4": "mpeg4"}


def _encoder(params: dict, width: int, height: int):
    codec = params["codec"]
    enc = av.CodecContext.create(codec, "w")
    fps = int(params.get("fps", 25))
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base, enc.framerate = Fraction(1, fps), Fraction(fps, 1)
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
        enc.qmin = enc.qmax = int(params["qscale"])
    enc.bit_rate = int(params.get("bitrate", 0))      # 0: no bitrate target (constant quality)
    enc.options = options
    enc.thread_count = 1
    enc.flags |= GLOBAL_HEADER    # stream headers out of band, as a container would ask
    return enc


def roundtrip_uint8(frames: np.ndarray, params: dict) -> tuple[np.ndarray, int]:
    """Encode (T, H, W, 3) uint8 RGB and decode it back; returns (frames, encoded bytes).

    Packets go straight from the encoder to a decoder, with no container in between: the
    bundled libx265 sometimes gives its first packet an uninitialised DTS (about 1 in 90
    two-frame 16x16 clips), which a muxer refuses with EINVAL; the decoder ignores DTS."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"codec round trip expects (T, H, W, 3) uint8, got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if params.get("codec") not in MIN_SIDE:
        raise ValueError(f"unknown codec {params.get('codec')!r}; choose from {sorted(MIN_SIDE)}")
    padded = _pad(frames, MIN_SIDE[params["codec"]])
    enc = _encoder(params, padded.shape[2], padded.shape[1])
    packets = []
    for i, frame in enumerate(padded):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = i
        packets += enc.encode(vf)
    packets += enc.encode(None)
    dec = av.CodecContext.create(DECODER[params["codec"]], "r")
    dec.extradata = enc.extradata
    dec.thread_count = 1
    decoded = [f for p in packets for f in dec.decode(p)] + list(dec.decode(None))
    if len(decoded) != t:
        raise RuntimeError(f"codec {params['codec']} returned {len(decoded)} frames for {t}")
    size = sum(p.size for p in packets)
    return np.stack([f.to_ndarray(format="rgb24") for f in decoded])[:, :h, :w], size


def roundtrip(clip: torch.Tensor, params: dict) -> torch.Tensor:
    """Codec round trip of a clip (T, 3, H, W) in [0, 1] (8-bit levels), any device.

    Runs on CPU; the result is returned on the clip's device as float32 8-bit levels.
    """
    u8 = to_uint8(clip)
    back, _ = roundtrip_uint8(u8, params)
    return torch.from_numpy(back).permute(0, 3, 1, 2).to(device=clip.device, dtype=torch.float32) / 255.0

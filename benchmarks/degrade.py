"""Throughput of the degradation chain on one CPU core, against decoding video with PyAV.

    .venv/bin/python benchmarks/degrade.py [--clips 4] [--frames 15] [--size 256]

Prints clean-to-LQ frames/s for 15-frame 256x256 clips (crops of the real sample video) at
each preset, without and with the codec stage, and the ratio to PyAV decoding of the same
video (rgb24 frames, one thread), both per frame and per pixel (a bikes frame is 640x272).
Times are process CPU time (time.process_time), which a machine shared with other jobs
inflates far less than wall time; the wall-clock rate is printed alongside.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow
# the `degrade` package: put the repository root there instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import av
import numpy as np
import torch

from degrade import PRESETS, CodecConfig, degrade_clip, preset
from pipelines.common.samples import sample_video


def decode_fps(path: str, frames: int) -> tuple[float, int]:
    """Frames/s decoding `frames` frames to rgb24 numpy with one thread; returns (fps, pixels)."""
    best = 0.0
    for _ in range(2):
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            t0, n = time.process_time(), 0
            for frame in container.decode(stream):
                arr = frame.to_ndarray(format="rgb24")
                n += 1
                if n == frames:
                    break
            best = max(best, n / (time.process_time() - t0))
    return best, arr.shape[0] * arr.shape[1]


def clips(path: str, count: int, frames: int, size: int) -> list[torch.Tensor]:
    out, buf = [], []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            buf.append(frame.to_ndarray(format="rgb24"))
            if len(buf) == frames:
                arr = np.stack(buf)
                y0 = (arr.shape[1] - size) // 2
                x0 = (len(out) * 97) % (arr.shape[2] - size)
                out.append(torch.from_numpy(arr[:, y0:y0 + size, x0:x0 + size]).permute(0, 3, 1, 2).float() / 255)
                buf = []
                if len(out) == count:
                    break
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--frames", type=int, default=15)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = sample_video("bikes")
    data = clips(path, args.clips, args.frames, args.size)
    dec, dec_px = decode_fps(path, 150)
    px = args.size * args.size
    dec_eq = dec * dec_px / px
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, clips {len(data)} x "
          f"{args.frames} frames x {args.size}x{args.size}")
    print(f"PyAV decode of bikes (640x272 H.264 -> rgb24, 1 thread): {dec:.0f} frames/s "
          f"= {dec_eq:.0f} frames/s at {args.size}x{args.size}-equivalent pixels")
    print(f"{'preset':8s} {'codec':6s} {'frames/s':>9s} {'ms/frame':>9s} {'vs decode':>10s} {'vs decode/px':>13s}"
          f" {'wall fr/s':>10s}")
    degrade_clip(data[0], preset("heavy").replace(codec=CodecConfig(prob=0.0)), 0)  # warm-up
    for name in PRESETS:
        for with_codec in (False, True):
            cfg = preset(name, scale=4)
            cfg = cfg.replace(codec=CodecConfig(prob=0.0) if not with_codec else
                              CodecConfig(**{**cfg.codec.__dict__, "prob": 1.0}))
            if name == "clean" and with_codec:
                cfg = cfg.replace(codec=CodecConfig(prob=1.0))
            t0, w0 = time.process_time(), time.perf_counter()
            for i, clip in enumerate(data):
                degrade_clip(clip, cfg, np.random.default_rng(i))
            n = len(data) * args.frames
            fps, wall = n / (time.process_time() - t0), n / (time.perf_counter() - w0)
            print(f"{name:8s} {'on' if with_codec else 'off':6s} {fps:9.1f} {1000 / fps:9.2f} "
                  f"{fps / dec:10.2f} {fps / dec_eq:13.2f} {wall:10.1f}")


if __name__ == "__main__":
    main()

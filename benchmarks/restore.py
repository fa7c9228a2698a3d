"""Restoration throughput end to end, stage shares, and peak memory on a long video.

    .venv/bin/python benchmarks/restore.py                 # tiny model, this machine
    .venv/bin/python benchmarks/restore.py --long-frames 2000 --no-ray

1. Throughput: a piece of the real sample (bikes.mp4, spanning its cut at frame 30) scaled
   to --lr-size, restored in this process by `restore_video` with the tiny diffusion model
   (x4, the student's 4 steps) and by the bicubic baseline; frames/s end to end and the
   share of each stage: download (io), decode, shot detection, flow (+warp), UNet, VAE,
   other restore work (noise draws, tiles, device copies), encode (+audio, upload).
2. Ray: the same piece copied --ray-videos times into a folder, through `restore_archive`
   on Ray Data actors (--concurrency), to show what the job adds per video.
3. Memory: a --long-frames synthetic video restored by the tiny model; the process RSS is
   sampled as frames go by: early, late and peak (decode -> restore -> encode streams, so
   it must not grow with the length).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from pipelines.common import video
from pipelines.common.samples import sample_video
from pipelines.restore.archive import restore_archive
from pipelines.restore.config import RestoreConfig
from pipelines.restore.progress import Progress
from pipelines.restore.restorers import load_restorer
from pipelines.restore.stream import restore_video

STAGES = [("io", "download"), ("decode", "decode"), ("shots", "shot detection"), ("flow", "flow + warp"),
          ("unet", "UNet (4 steps)"), ("vae", "VAE decode"), ("restore_other", "other restore"),
          ("encode", "encode + upload")]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_model(folder: str) -> str:
    """The tiny preset saved like a real model, with a 'trained' student (non-zero temporal weights)."""
    from models.presets import save_tiny_pretrained
    from models.upscaler.bundle import UpscalerBundle
    from models.upscaler.video import VideoUpscaler

    save_tiny_pretrained(folder, seed=0)
    up = VideoUpscaler(UpscalerBundle.from_pretrained(folder))
    with torch.no_grad():
        w = up.student.conv_in.weight
        w[:, 7:] = torch.randn(w[:, 7:].shape, generator=torch.Generator().manual_seed(1)) * 0.1
    up.save_student(os.path.join(folder, "student"))
    return folder


def bikes_piece(path: str, frames: int, width: int, height: int) -> str:
    import cv2

    src = sample_video("bikes")
    start = max(0, 30 - frames // 2)                      # spans the cut at frame 30
    small = (cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA)
             for f in video.iter_frames(src, start=start, count=frames))
    video.write_video(path, small, fps=25, crf=18, preset="veryfast")
    return path


def stage_table(row: dict) -> list[tuple[str, float]]:
    s = {k: row.get(f"{k}_s", 0.0) for k in ("io", "decode", "shots", "restore", "encode", "flow", "unet", "vae")}
    s["restore_other"] = max(s["restore"] - s["flow"] - s["unet"] - s["vae"], 0.0)
    return [(label, s[key]) for key, label in STAGES]


def throughput(name: str, cfg: RestoreConfig, src: str, out: str) -> dict:
    restorer = load_restorer(cfg)
    t0 = time.perf_counter()
    row = restore_video(src, out, restorer, cfg, device="cpu")
    wall = time.perf_counter() - t0
    assert row["status"] == "done", row["error"]
    print(f"\n{name}: {row['frames']} frames {row['width']}x{row['height']} -> {row['out_width']}x"
          f"{row['out_height']}, {row['shots']} shots, {wall:.2f} s, {row['frames'] / wall:.2f} frames/s end to end")
    table = stage_table(row)
    total = sum(t for _, t in table)
    print(f"  {'stage':<18}{'s':>8}{'ms/frame':>10}{'share':>8}")
    for label, t in table:
        print(f"  {label:<18}{t:8.2f}{1000 * t / row['frames']:10.1f}{100 * t / wall:7.1f}%")
    print(f"  {'(unaccounted)':<18}{wall - total:8.2f}{1000 * (wall - total) / row['frames']:10.1f}"
          f"{100 * (wall - total) / wall:7.1f}%")
    return row


def long_video_memory(cfg: RestoreConfig, folder: str, frames: int, size: tuple[int, int]) -> None:
    from tests.media import textured_frames

    src = os.path.join(folder, "long.mp4")
    chunk = 100
    with video.VideoWriter(src, fps=25, crf=23, preset="ultrafast") as w:
        for k in range(0, frames, chunk):                  # a new shot every 100 frames
            for f in textured_frames(min(chunk, frames - k), size[1], size[0], seed=k):
                w.write(f)
    restorer = load_restorer(cfg)
    samples: list[tuple[int, float]] = []
    progress = Progress(1)
    stop = threading.Event()

    def sample():
        while not stop.wait(0.2):
            samples.append((progress.frames_done, rss_mb()))

    thread = threading.Thread(target=sample, daemon=True)
    before = rss_mb()
    thread.start()
    t0 = time.perf_counter()
    row = restore_video(src, os.path.join(folder, "out", "long.mp4"), restorer, cfg, progress=progress)
    stop.set()
    thread.join()
    wall = time.perf_counter() - t0
    assert row["status"] == "done", row["error"]
    arr = np.array(samples) if samples else np.zeros((1, 2))
    early = arr[arr[:, 0] <= frames * 0.1][:, 1].max(initial=before)
    late = arr[arr[:, 0] >= frames * 0.9][:, 1].max(initial=before)
    peak_hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nlong video: {row['frames']} frames {size[0]}x{size[1]} -> x4, {row['shots']} shots, {wall:.1f} s "
          f"({row['frames'] / wall:.2f} frames/s)")
    print(f"  RSS before {before:.0f} MB; max over the first 10% of frames {early:.0f} MB; "
          f"over the last 10% {late:.0f} MB; peak sampled {arr[:, 1].max():.0f} MB; "
          f"process high-water mark {peak_hwm:.0f} MB")
    print(f"  growth from the first 10% to the last 10%: {late - early:+.1f} MB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=24, help="frames of the bikes piece (centred on its cut)")
    ap.add_argument("--lr-size", type=int, nargs=2, default=(64, 32), help="LR width height")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (2 threads ran ~10x slower than 1 on this shared, loaded 2-CPU machine)")
    ap.add_argument("--ray", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--ray-videos", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--long-frames", type=int, default=2000, help="0 = skip the memory run")
    ap.add_argument("--long-model", default="tiny", choices=("tiny", "bicubic"), help="restorer of the long video")
    ap.add_argument("--long-timesteps", type=int, nargs="+", default=None,
                    help="student timesteps for the long video (default the model's 4); fewer = faster")
    ap.add_argument("--long-size", type=int, nargs=2, default=(32, 32),
                    help="LR width height of the long video (the tiny flow net needs >= 32 px)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="d2vr-bench-") as tmp:
        model = make_model(os.path.join(tmp, "model"))
        src = bikes_piece(os.path.join(tmp, "in", "bikes.mp4"), args.frames, *args.lr_size)
        base = RestoreConfig(src=os.path.join(tmp, "in"), dst=os.path.join(tmp, "out"), model=model, tile=0,
                             preset="veryfast", profile=True, ray=False)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other users' work slows all figures); "
              f"tiny x4 model, student timesteps 750/500/250/0")
        throughput("tiny diffusion (x4)", base, src, os.path.join(tmp, "out", "tiny.mp4"))
        throughput("bicubic baseline (x4)", dataclasses.replace(base, model="bicubic"), src,
                   os.path.join(tmp, "out", "bicubic.mp4"))
        tiled = dataclasses.replace(base, tile=32, tile_overlap=16, tile_margin=2, tile_align=4)
        throughput("tiny diffusion, 32 px tiles", tiled, src, os.path.join(tmp, "out", "tiled.mp4"))
        if args.ray:
            import shutil

            folder = os.path.join(tmp, "archive")
            os.makedirs(folder)
            for i in range(args.ray_videos):
                shutil.copy(src, os.path.join(folder, f"v{i}.mp4"))
            cfg = dataclasses.replace(base, src=folder, dst=os.path.join(tmp, "ray_out"), ray=True,
                                      concurrency=args.concurrency, num_cpus=1, progress_every_s=30)
            t0 = time.perf_counter()
            summary = restore_archive(cfg)
            wall = time.perf_counter() - t0
            busy = sum(r["seconds"] for r in summary["rows"])
            print(f"\nRay Data, {args.concurrency} actors x 1 CPU, {args.ray_videos} videos: {summary['frames']} frames "
                  f"in {wall:.1f} s = {summary['frames'] / wall:.2f} frames/s including Ray start and model loads; "
                  f"inside the actors {summary['frames'] / busy * args.concurrency:.2f} frames/s")
        if args.long_frames:
            long_cfg = dataclasses.replace(base, preset="ultrafast", profile=False,
                                           model=model if args.long_model == "tiny" else "bicubic",
                                           timesteps=tuple(args.long_timesteps or ()))
            print(f"\nlong-video memory run: {args.long_model} restorer, timesteps {long_cfg.timesteps or 'default'}")
            long_video_memory(long_cfg, tmp, args.long_frames, tuple(args.long_size))
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

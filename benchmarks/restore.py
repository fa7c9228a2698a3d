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
4. Scaling (`--scaling`): one long multi-shot real video (bikes.mp4, 6 shots, repeated
   --scaling-repeat times) restored sequentially on 1 actor and shot-parallel on 2 actors
   (`--frames-per-task`): frames/s and the ratio; throughput against `--batch-shots`; and
   the time of a 1-hour film on N GPUs, simulated from bikes.mp4's shot lengths and the
   planning, task and join overheads measured here, per second of restorer time per frame.
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


def film(path: str, repeat: int, width: int, height: int) -> tuple[str, list[int]]:
    """bikes.mp4 (all 250 frames, 6 shots) at width x height, `repeat` times: (path, shot lengths)."""
    import cv2

    from pipelines.data.shots import detect_shots

    frames = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA)
              for f in video.iter_frames(sample_video("bikes"))]
    video.write_video(path, (f for _ in range(repeat) for f in frames), fps=25, crf=18, preset="veryfast")
    return path, [b - a for a, b in detect_shots(np.stack(frames))]


def scaling(args, model: str, tmp: str) -> None:
    from pipelines.restore import archive, segments

    folder = os.path.join(tmp, "film")
    os.makedirs(folder)
    src, shot_lengths = film(os.path.join(folder, "film.mp4"), args.scaling_repeat, *args.scaling_size)
    info = video.probe(src)
    base = RestoreConfig(src=folder, dst="", model=model, tile=0, preset="veryfast", num_cpus=1,
                         progress_every_s=60, manifest_every_s=3600)
    archive._ensure_ray(base)
    t0 = time.perf_counter()
    starts = segments.find_shots(src, base, info)
    plan_fps = info.frames / (time.perf_counter() - t0)
    print(f"\nscaling: {info.frames} frames {info.width}x{info.height} -> x4, {len(starts)} shots "
          f"(bikes.mp4 x{args.scaling_repeat}); shot lengths {shot_lengths}; shot pass {plan_fps:.0f} frames/s")
    walls = {}
    for name, actors, fpt in (("1 actor, sequential", 1, 0), ("2 actors, shot-parallel", 2, args.frames_per_task)):
        cfg = dataclasses.replace(base, dst=os.path.join(tmp, f"scale{actors}"), concurrency=actors,
                                  frames_per_task=fpt)
        t0 = time.perf_counter()
        summary = archive.restore_archive(cfg)
        walls[actors] = time.perf_counter() - t0
        row = summary["rows"][0]
        print(f"  {name:<26} {info.frames / walls[actors]:6.2f} frames/s ({walls[actors]:.1f} s wall incl. actor "
              f"starts and model loads; {row['segments'] or 1} task(s); inside the tasks "
              f"{info.frames / row['seconds']:.2f} frames/s per actor)")
    print(f"  ratio 2 actors / 1 actor: {walls[1] / walls[2]:.2f}x")
    seq_frame_s = walls[1] / info.frames
    b_fps, rows = {}, {}
    for b in args.batch_shots:
        cfg = dataclasses.replace(base, dst=os.path.join(tmp, f"batch{b}"), ray=False, frames_per_task=args.frames_per_task,
                                  batch_shots=b)
        summary = archive.restore_archive(cfg)
        b_fps[b], rows[b] = summary["frames"] / summary["seconds"], summary["rows"][0]
    print("  in-process throughput vs --batch-shots (1 CPU thread): " +
          ", ".join(f"B={b}: {v:.2f} frames/s ({v / b_fps[args.batch_shots[0]]:.2f}x)" for b, v in b_fps.items()))
    # Overheads per segment task (all but the restorer's own time) and of the join, measured here.
    row = rows[args.batch_shots[0]]
    task_overhead = max(0.0, (row["seconds"] - row["restore_s"]) / max(1, row["segments"]))
    seg_cfg = dataclasses.replace(base, dst=os.path.join(tmp, f"batch{args.batch_shots[0]}"))
    out = os.path.join(seg_cfg.dst, "film.mp4")
    t0 = time.perf_counter()
    video.concat_videos([out] * 4, os.path.join(tmp, "joined.mp4"))
    join_fps = 4 * info.frames / (time.perf_counter() - t0)
    print(f"  per segment task: {task_overhead:.2f} s besides restoring (decode, seek, encode, open); "
          f"join {join_fps:.0f} frames/s (packet copy)")
    film_estimate(shot_lengths, args.frames_per_task, plan_fps, task_overhead, join_fps, seq_frame_s)


def film_estimate(shot_lengths: list[int], frames_per_task: int, plan_fps: float, task_overhead: float,
                  join_fps: float, frame_s_here: float, fps: float = 24.0, hours: float = 1.0) -> None:
    """A `hours`-long film on N GPUs: shots drawn from `shot_lengths` (real cuts), grouped as
    `segments.group_shots` does, handed to the next free actor in order (as Ray Data does);
    serial parts: the shot pass (one task) and the join (the driver)."""
    from pipelines.restore.segments import group_shots

    rng = np.random.default_rng(0)
    total, starts = int(hours * 3600 * fps), [0]
    while starts[-1] < total:
        starts.append(starts[-1] + int(rng.choice(shot_lengths)))
    starts = starts[:-1]
    segs = [s["count"] for s in group_shots(starts, total, frames_per_task)]
    serial = total / plan_fps + total / join_fps
    print(f"\n1-hour film estimate: {total} frames at {fps:g} fps, {len(starts)} shots (lengths drawn from "
          f"bikes.mp4's), {len(segs)} segments of <= {frames_per_task} frames; serial: shot pass "
          f"{total / plan_fps / 60:.1f} min + join {total / join_fps / 60:.1f} min (rates measured here at this "
          f"resolution); {task_overhead:.1f} s per task")
    print(f"  restorer time f s/frame; wall hours = a + b*f; here f = {frame_s_here:.3f} s (tiny model, 1 CPU)")
    print(f"  {'GPUs':>5} {'a (h)':>7} {'b (h per s/frame)':>18} {'speedup':>8} {'at f here (h)':>14}")
    one = None
    for n in (1, 2, 4, 8, 16, 32, 64, 128):
        load, tasks = np.zeros(n), np.zeros(n)            # frames and tasks per actor
        for count in segs:                                 # greedy, in order: the next free actor
            k = int(np.argmin(load + tasks * task_overhead / max(frame_s_here, 1e-9)))
            load[k] += count
            tasks[k] += 1
        k = int(np.argmax(load * frame_s_here + tasks * task_overhead))
        a = (serial + tasks[k] * task_overhead) / 3600
        b = load[k] / 3600
        wall = a + b * frame_s_here
        one = one or wall
        print(f"  {n:5d} {a:7.2f} {b:18.2f} {one / wall:8.2f} {wall:14.2f}")


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
    ap.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=True,
                    help="the shot-parallel scaling run (part 4)")
    ap.add_argument("--scaling-only", action="store_true", help="only part 4")
    ap.add_argument("--scaling-repeat", type=int, default=2, help="bikes.mp4 repeated this many times (250 frames each)")
    ap.add_argument("--scaling-size", type=int, nargs=2, default=(96, 40), help="LR width height of the long video")
    ap.add_argument("--frames-per-task", type=int, default=120, help="segment size of the shot-parallel runs")
    ap.add_argument("--batch-shots", type=int, nargs="+", default=(1, 2, 4), help="--batch-shots values compared")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.scaling_only:
        with tempfile.TemporaryDirectory(prefix="d2vr-bench-") as tmp:
            scaling(args, make_model(os.path.join(tmp, "model")), tmp)
        return 0
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
        if args.scaling:
            scaling(args, model, tmp)
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

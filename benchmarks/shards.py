"""Shard building and loader throughput on this machine: `python benchmarks/shards.py`.

1. build: the sample video (bikes.mp4, 640x272, 250 frames) copied `--copies` times into a
   local folder -> clip shards (16-frame clips, stride 16, 256 px crops). In one process
   (no Ray), then with Ray Data on a local Ray of `--cpus` CPUs, twice (cold: worker
   processes start and import; warm: reused): the difference is Ray's overhead. Also PNG frames in one process. Prints clips/s, MB/s of shards, decoded
   frames/s and the share of task time per stage (decoding first).
2. loaders: distillation batches (8-frame clips, 256 px HQ -> 64 px LQ) and flow pairs
   (96 px, made at 192 px) with the heavy degradation, 2 DataLoader workers: samples/s;
   then one in-process pass that times frame decoding, for its share.
3. the same distillation samples through Ray Data (`read_webdataset` -> `map` ->
   `iter_torch_batches`), to compare with the WebDataset + DataLoader loader.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from pipelines.common.samples import sample_video
from pipelines.data import loaders
from pipelines.data.loaders import LoaderConfig, make_distill_loader, make_flow_loader
from pipelines.data.shards import ShardConfig, build_shards

STAGES = ("download", "decode", "shots", "resize", "encode", "write")


def build(label: str, src: str, dst: str, **kw) -> dict:
    cfg = ShardConfig(src=src, dst=dst, clip_len=16, stride=16, size=256, shard_mb=64, progress=False, **kw)
    s = build_shards(cfg)
    stage_total = sum(s[f"{k}_s"] for k in STAGES) or 1.0
    frames = s["clips"] * cfg.clip_len
    print(f"  {label:26s} {s['clips']:3d} clips in {s['seconds']:5.1f} s: {s['clips_per_s']:5.1f} clips/s, "
          f"{s['mb_per_s']:5.2f} MB/s of shards, {frames / s['seconds']:6.1f} clip frames/s; task time: "
          + ", ".join(f"{k} {100 * s[f'{k}_s'] / stage_total:.0f}%" for k in STAGES))
    return s


def time_loader(label: str, make, url: str, cfg: LoaderConfig, max_samples: int) -> float:
    t0, n, first = time.perf_counter(), 0, None
    for batch in make(url, cfg):
        n += len(batch["key"])
        first = first or (time.perf_counter() - t0)
        if n >= max_samples:
            break
    dt = time.perf_counter() - t0
    print(f"  {label:38s} {n:3d} samples in {dt:5.1f} s: {n / dt:6.2f} samples/s "
          f"(first batch after {first:.1f} s: worker start + shuffle buffer fill)")
    return n / dt


def decode_share(make, url: str, cfg: LoaderConfig, max_samples: int) -> str:
    spent = [0.0]
    original = loaders._decode

    def timed(data):
        t = time.perf_counter()
        out = original(data)
        spent[0] += time.perf_counter() - t
        return out

    loaders._decode = timed
    try:
        t0, n = time.perf_counter(), 0
        for batch in make(url, cfg):
            n += len(batch["key"])
            if n >= max_samples:
                break
        total = time.perf_counter() - t0
    finally:
        loaders._decode = original
    return f"{100 * spent[0] / total:.1f}% decoding frames ({n / total:.2f} samples/s in one process)"


def ray_data_distill(url: str, cfg: LoaderConfig, max_samples: int) -> float:
    """The distillation samples via Ray Data: read_webdataset -> map (decode, crop, degrade)."""
    import ray

    from degrade import degrade_clip, preset

    deg = preset(cfg.degrade, scale=cfg.scale)

    def make_sample(row: dict) -> dict:
        rng = np.random.default_rng(abs(hash(row["__key__"])) % (2**32))
        names = sorted(k for k in row if k.split(".")[0].isdigit())[:cfg.clip_len]
        frames = np.stack([loaders._decode(row[n]) for n in names])
        y, x = loaders._crop_box(rng, frames.shape[1], frames.shape[2], cfg.crop, row["__key__"])
        hq = loaders._to_tensor(frames[:, y:y + cfg.crop, x:x + cfg.crop])
        lq, _ = degrade_clip(hq, deg, rng)
        return {"lq": lq.numpy(), "hq": hq.numpy()}

    tars = loaders.list_shards(url)
    t0, n = time.perf_counter(), 0
    ds = ray.data.read_webdataset(tars, decoder=None).map(make_sample, num_cpus=1)
    for batch in ds.iter_torch_batches(batch_size=cfg.batch_size):
        n += len(batch["lq"])
        if n >= max_samples:
            break
    dt = time.perf_counter() - t0
    print(f"  {'Ray Data distill (heavy)':38s} {n:3d} samples in {dt:5.1f} s: {n / dt:6.2f} samples/s")
    return n / dt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=4, help="copies of bikes.mp4 in the source folder")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--samples", type=int, default=16, help="samples per loader measurement")
    parser.add_argument("--skip-ray-data", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="d2vr-bench-shards-")
    try:
        src = os.path.join(work, "src")
        os.makedirs(src)
        for i in range(args.copies):
            shutil.copy(sample_video("bikes"), os.path.join(src, f"bikes_{i}.mp4"))
        print(f"[1] build shards: {args.copies} x bikes.mp4 (640x272, 250 frames), clip 16, stride 16, 256 px")
        build("one process, JPEG q95", src, os.path.join(work, "jpg"), use_ray=False)
        build("one process, PNG", src, os.path.join(work, "png"), use_ray=False, frame_format="png")
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        print(f"  (ray.init: {time.perf_counter() - t0:.1f} s, not counted below)")
        build(f"Ray Data ({args.cpus} CPUs), cold", src, os.path.join(work, "ray"), use_ray=True)
        build(f"Ray Data ({args.cpus} CPUs), warm", src, os.path.join(work, "ray2"), use_ray=True)

        url = os.path.join(work, "jpg")
        print(f"[2] loaders over {len(loaders.list_shards(url))} shards, heavy degradation, 2 workers")
        distill = LoaderConfig(batch_size=4, num_workers=2, crop=256, clip_len=8, degrade="heavy", scale=4,
                               shuffle_buffer=16)
        flow = LoaderConfig(batch_size=8, num_workers=2, crop=96, flow_scale=2, degrade="heavy",
                            shuffle_buffer=16)
        time_loader("distill 8x256px -> 64px (heavy)", make_distill_loader, url, distill, args.samples)
        time_loader("distill, clean preset (no degradation)", make_distill_loader, url,
                    LoaderConfig(**{**distill.__dict__, "degrade": "clean"}), args.samples)
        time_loader("flow pairs 96px from 192px (heavy)", make_flow_loader, url, flow, args.samples)
        one = LoaderConfig(**{**distill.__dict__, "num_workers": 0})
        print(f"  distill: {decode_share(make_distill_loader, url, one, args.samples // 2)}")
        print(f"  flow:    {decode_share(make_flow_loader, url, LoaderConfig(**{**flow.__dict__, 'num_workers': 0}), args.samples // 2)}")
        if not args.skip_ray_data:
            print("[3] the distillation samples through Ray Data instead")
            ray_data_distill(url, distill, args.samples)
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

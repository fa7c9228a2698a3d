"""Memory of one full-size distillation step, by batch and crop, and what the savings buy.

    .venv/bin/python benchmarks/distill_memory.py                       # sd-x4 architecture, random weights
    .venv/bin/python benchmarks/distill_memory.py --batch 1 2 --crop 64 128 --variants base lean
    .venv/bin/python benchmarks/distill_memory.py --architecture tiny   # a quick check of the script

Each point is a fresh process (so its peak is its own): the teacher, the student (the prior
widened for the temporal channels), the discriminator (the prior's encoder + heads), T-LPIPS
(random trunk), Adam for student and D, then one alternating step (Eq. 3-6) on random
3-frame clips. Printed per point: peak resident memory (CPU) or peak allocated CUDA memory,
and the step's seconds. Variants:
- base: the paper's setting as the job runs it by default (fp32 on CPU);
- ckpt: `--gradient-checkpointing` (the student recomputes its block activations);
- heads: `--no-d-train-encoder` (D trains its heads only: no gradients / Adam state for the encoder);
- lean: both.
The last line, `MEMORY {json}`, holds every point; the README's memory plan is built from it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = {"base": {}, "ckpt": {"gradient_checkpointing": True}, "heads": {"d_train_encoder": False},
            "lean": {"gradient_checkpointing": True, "d_train_encoder": False}}


def one_point(architecture: str, batch: int, crop: int, variant: str, clip_len: int, device: str) -> dict:
    """Runs in the child process: build, one step, report."""
    import torch

    from pipelines.common import cli
    from pipelines.train.distill import DistillTrainConfig, build_models, distill_step, plain_engines

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    cfg = cli.build(DistillTrainConfig, teacher=architecture, flow="none", crop=crop, clip_len=clip_len,
                    batch_size=batch, tlpips_backbone="random", **VARIANTS[variant])
    models, _ = build_models(cfg, dev, dtype)
    models.upscaler.train()
    models.discriminator.to(dev, dtype)
    g, d = plain_engines(models, 2e-5)
    lq = torch.rand(batch, clip_len, 3, crop // 4, crop // 4, device=dev)
    hq = torch.rand(batch, clip_len, 3, crop, crop, device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    distill_step(models, g, d, {"lq": lq, "hq": hq}, cfg.loss, torch.Generator().manual_seed(0))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 30
    return {"architecture": architecture, "batch": batch, "crop": crop, "variant": variant, "clip_len": clip_len,
            "device": device, "peak_gib": round(peak, 2), "seconds": round(seconds, 1),
            "d_trainable_m": round(sum(p.numel() for p in models.discriminator.trainable_parameters()) / 1e6, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--architecture", default="sd-x4-random", choices=("sd-x4-random", "small", "tiny"))
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    p.add_argument("--crop", type=int, nargs="+", default=[64, 128])
    p.add_argument("--variants", nargs="+", default=["base", "lean"], choices=tuple(VARIANTS))
    p.add_argument("--clip-len", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--point", default="", help=argparse.SUPPRESS)    # internal: run one point, print JSON
    args = p.parse_args(argv)
    if args.point:
        b, c, v = args.point.split(",")
        print("POINT " + json.dumps(one_point(args.architecture, int(b), int(c), v, args.clip_len, args.device)))
        return 0
    rows = []
    for v in args.variants:
        for b in args.batch:
            for c in args.crop:
                cmd = [sys.executable, os.path.abspath(__file__), "--architecture", args.architecture,
                       "--clip-len", str(args.clip_len), "--device", args.device, "--point", f"{b},{c},{v}"]
                out = subprocess.run(cmd, capture_output=True, text=True)
                line = next((ln for ln in out.stdout.splitlines() if ln.startswith("POINT ")), None)
                row = json.loads(line[6:]) if line else {"architecture": args.architecture, "batch": b, "crop": c,
                                                          "variant": v, "error": (out.stderr.strip().splitlines()
                                                                                  or ["killed"])[-1][:200]}
                rows.append(row)
                print(f"[distill_memory] {v:5s} batch {b} crop {c}: " +
                      (f"{row['peak_gib']:.1f} GiB, {row['seconds']:.1f} s, D trains {row['d_trainable_m']} M"
                       if "peak_gib" in row else row["error"]), flush=True)
    print("MEMORY " + json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

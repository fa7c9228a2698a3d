"""Seconds per frame: the few-step temporal student vs the multi-step teacher, same frames.

    .venv/bin/python benchmarks/sampling.py                          # tiny, CPU
    .venv/bin/python benchmarks/sampling.py --preset sd-x4-random --device cuda --dtype float16 \
        --vae-dtype float32 --lr-size 128                            # full x4 architecture, random weights

Prints, for each sampler, seconds per frame split into flow (DRFA on the low-res frames),
UNet and VAE (decode) time, the rest ("other": noise, warping, bookkeeping), and the
teacher / student ratio. Weights are random (no download): only the time is meaningful.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models.presets import build_random_bundle, upscaler_preset  # noqa: E402
from models.timing import SectionTimer  # noqa: E402
from models.upscaler.video import VideoUpscaler  # noqa: E402
from pipelines.common.devices import DTYPES  # noqa: E402



def moving_clip(frames: int, size: int) -> torch.Tensor:
    """(T, 3, size, size) low-res frames: the scikit-image astronaut panning 1 px per frame."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    img = F.interpolate(img, size=(size, size + frames), mode="bilinear", antialias=True, align_corners=False)
    return torch.stack([img[0, :, :, i:i + size] for i in range(frames)]).clamp(0, 1)


def flow_net_for(preset: str):
    try:
        from models.flow import build, flow_preset
    except ImportError:
        return None, "none (models.flow not available: zero flow)"
    name = "tiny" if preset == "tiny" else "full"
    try:
        cfg = flow_preset(name, variant="drfa")
    except ValueError:
        name, cfg = "tiny", flow_preset("tiny", variant="drfa")
    return build(cfg), f"DRFA '{name}' preset, random weights"


def run(up: VideoUpscaler, clip: torch.Tensor, sampler: str, steps: int | None) -> dict[str, float]:
    up.restore_frame(clip[0], None, sampler=sampler, steps=steps)       # warm-up (allocations, kernels)
    if len(clip) > 1:
        _, state = up.restore_frame(clip[0], None, sampler=sampler, steps=steps)
        up.restore_frame(clip[1], state, sampler=sampler, steps=steps)
    timer = SectionTimer()
    up.timer = timer
    if up.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    up.restore_clip(clip, sampler=sampler, steps=steps)
    if up.device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - start
    up.timer = None
    n = len(clip)
    out = {k: timer.seconds.get(k, 0.0) / n for k in ("flow", "unet", "vae")}
    out["total"] = total / n
    out["other"] = out["total"] - out["flow"] - out["unet"] - out["vae"]
    out["unet_calls"] = timer.calls.get("unet", 0) / n
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=["tiny", "sd-x4-random"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--vae-dtype", default=None, choices=sorted(DTYPES), help="default: --dtype")
    p.add_argument("--frames", type=int, default=4, help="timed frames per sampler")
    p.add_argument("--lr-size", type=int, default=None, help="low-res side (default 16 tiny, 128 sd-x4-random)")
    p.add_argument("--teacher-steps", type=int, default=50)
    p.add_argument("--solver", default="ddim", choices=["ddim", "dpm"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.lr_size or (16 if args.preset == "tiny" else 128)
    cfg = upscaler_preset(args.preset, teacher_steps=args.teacher_steps, teacher_solver=args.solver)
    flow_net, flow_desc = flow_net_for(args.preset)
    up = VideoUpscaler(build_random_bundle(args.preset, seed=0), cfg, flow_net, device=args.device,
                       dtype=DTYPES[args.dtype], vae_dtype=DTYPES[args.vae_dtype] if args.vae_dtype else None)
    clip = moving_clip(args.frames, size)
    print(f"preset {args.preset} (random weights), device {args.device}, UNet {args.dtype}, "
          f"VAE {args.vae_dtype or args.dtype}, torch threads {torch.get_num_threads()}")
    print(f"{args.frames} frames {size}x{size} -> {size * up.scale}x{size * up.scale}; flow: {flow_desc}")
    student = run(up, clip, "student", None)
    teacher = run(up, clip, "teacher", args.teacher_steps)
    rows = [(f"student {len(cfg.student_timesteps)}-step {tuple(cfg.student_timesteps)}", student),
            (f"teacher {args.teacher_steps}-step {args.solver}", teacher)]
    print(f"{'s/frame':<40}{'total':>9}{'flow':>9}{'unet':>9}{'vae':>9}{'other':>9}{'unet calls':>12}")
    for name, r in rows:
        print(f"{name:<40}{r['total']:>9.4f}{r['flow']:>9.4f}{r['unet']:>9.4f}{r['vae']:>9.4f}"
              f"{r['other']:>9.4f}{r['unet_calls']:>12.0f}")
    print(f"teacher / student: {teacher['total'] / student['total']:.2f}x per frame "
          f"(UNet only: {teacher['unet'] / max(student['unet'], 1e-12):.2f}x)")


if __name__ == "__main__":
    main()

"""What only a GPU shows, in one run (<= 8 minutes on one H100/H200): `bash benchmarks/gpu_check.sh`.

    bash benchmarks/gpu_check.sh                 # full-size random-weight x4 upscaler, CUDA
    .venv/bin/python benchmarks/gpu_check.py --smoke    # the same checks on tiny models, CPU (tests)

Every model has random weights built from the real configs (no download): only time,
memory and numerical error are meaningful. Prints one line per check and, last, one
`GPU_CHECK {json}` line with every figure:

1. unet_step  - the full x4 UNet (473 M), forward + backward at a 128x128 latent (512 px
                output), bf16: seconds and achieved TFLOP/s (torch's FLOP counter) vs the
                device's dense bf16 peak.
2. vae_decode - the x4 VAE decoding a 128x128 latent to 512x512, fp32 vs bf16: seconds and
                the largest pixel difference (the reason d2vr keeps the VAE in fp32).
3. restore    - the 4-step student end to end, 128x128 -> 512x512 frames (DRFA flow, UNet
                bf16, VAE fp32): frames/s over a few frames.
4. drfa_step  - the full-size DRFA, one training step in bf16 (DeepSpeed's cast) at batch 8,
                256x256 pairs: seconds and peak memory.
5. distill    - one adversarial distillation step (student + discriminator + T-LPIPS) at the
                paper's batch 8 and `--crop` (default 512 px HR, 3-frame clips), bf16, Adam:
                seconds and peak memory; on out-of-memory the batch is halved until it fits,
                and the line says so.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


REPEAT = 3                                            # timed repetitions (--smoke: 1)


def timed(fn, device, repeat: int | None = None) -> float:
    repeat = repeat or REPEAT
    fn()                                              # warm-up: kernels, allocator
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeat


def peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def check_unet(bundle, latent: int, device, dtype, out: dict) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    unet = bundle.unet.to(device, dtype).train()
    cin = unet.config.in_channels
    x = torch.randn(1, cin, latent, latent, device=device, dtype=dtype)
    t = torch.tensor([500], device=device)
    enc = bundle.prompt_embeds.to(device, dtype)
    labels = torch.tensor([20], device=device)

    def step():
        unet(x, t, encoder_hidden_states=enc, class_labels=labels).sample.float().mean().backward()
        unet.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    seconds = timed(step, device)
    tflops = counter.get_total_flops() / seconds / 1e12
    peak = peak_tflops(device)
    out["unet_step"] = {"latent": latent, "seconds": seconds, "tflop_per_step": counter.get_total_flops() / 1e12,
                        "achieved_tflops": tflops, "peak_tflops": peak,
                        "utilisation": tflops / peak if peak else None}
    unet.eval().requires_grad_(False)
    print(f"[gpu_check] unet_step: {seconds * 1e3:.0f} ms fwd+bwd at {latent}x{latent}, {tflops:.1f} TFLOP/s"
          + (f" ({100 * tflops / peak:.0f}% of {peak:.0f})" if peak else ""), flush=True)


@torch.no_grad()
def check_vae(bundle, latent: int, device, out: dict) -> None:
    vae = bundle.vae.to(device, torch.float32).eval()
    z = torch.randn(1, vae.config.latent_channels, latent, latent, device=device)
    ref = vae.decode(z).sample
    t32 = timed(lambda: vae.decode(z), device)
    vae.to(torch.bfloat16)
    low = vae.decode(z.bfloat16()).sample.float()
    t16 = timed(lambda: vae.decode(z.bfloat16()), device)
    vae.to(torch.float32)
    err = float(((low - ref).abs() / 2).max())        # [-1, 1] -> [0, 1] pixel units
    out["vae_decode"] = {"latent": latent, "fp32_s": t32, "bf16_s": t16, "bf16_max_pixel_error": err}
    print(f"[gpu_check] vae_decode: fp32 {t32 * 1e3:.0f} ms, bf16 {t16 * 1e3:.0f} ms, bf16 max error {err:.4f}",
          flush=True)


@torch.no_grad()
def check_restore(bundle, flow_net, lr: int, frames: int, device, dtype, out: dict) -> None:
    from models.upscaler.config import UpscalerConfig
    from models.upscaler.video import VideoUpscaler

    up = VideoUpscaler(bundle, UpscalerConfig(pretrained="random"), flow_net, device=device, dtype=dtype)
    clip = torch.rand(frames, 3, lr, lr, generator=torch.Generator().manual_seed(0))
    up.restore_clip(clip[:2])                         # warm-up
    sync(device)
    t0 = time.perf_counter()
    up.restore_clip(clip)
    sync(device)
    fps = frames / (time.perf_counter() - t0)
    out["restore"] = {"lr": lr, "hr": lr * up.scale, "frames_per_s": fps}
    print(f"[gpu_check] restore: 4-step student {lr}x{lr} -> {lr * up.scale}x{lr * up.scale}: {fps:.2f} frames/s",
          flush=True)


def check_drfa(preset: str, batch: int, size: int, device, out: dict) -> None:
    from models.flow import build, flow_preset, sequence_loss

    reset_peak(device)
    model = build(flow_preset(preset, "drfa")).to(device).train().to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    img = torch.rand(2, batch, 3, size, size, device=device)
    gt = torch.zeros(batch, 2, size, size, device=device)

    def step():
        loss, _ = sequence_loss(model(img[0].bfloat16(), img[1].bfloat16()).flows, gt)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = timed(step, device, repeat=None if REPEAT == 1 else 2)
    out["drfa_step"] = {"preset": preset, "batch": batch, "size": size, "seconds": seconds, "peak_gib": peak_gib(device)}
    print(f"[gpu_check] drfa_step: {preset} DRFA bf16, batch {batch} at {size}px: {seconds:.2f} s"
          + (f", peak {peak_gib(device):.1f} GiB" if device.type == "cuda" else ""), flush=True)


def check_distill(teacher: str, batch: int, crop: int, clip_len: int, device, dtype, out: dict) -> None:
    from pipelines.common import cli
    from pipelines.train.distill import DistillTrainConfig, build_models, distill_step, plain_engines

    while batch >= 1:
        reset_peak(device)
        try:
            cfg = cli.build(DistillTrainConfig, teacher=teacher, flow="none", crop=crop, clip_len=clip_len,
                            batch_size=batch, tlpips_backbone="random")
            models, _ = build_models(cfg, device, dtype)
            models.discriminator.to(device, dtype)
            g, d = plain_engines(models, 2e-5)
            lq = torch.rand(batch, clip_len, 3, crop // 4, crop // 4, device=device)
            hq = torch.rand(batch, clip_len, 3, crop, crop, device=device)
            dcfg = cfg.loss
            seconds = timed(lambda: distill_step(models, g, d, {"lq": lq, "hq": hq}, dcfg), device, repeat=1)
            out["distill"] = {"batch": batch, "crop": crop, "clip_len": clip_len, "seconds": seconds,
                              "peak_gib": peak_gib(device)}
            print(f"[gpu_check] distill: batch {batch}, crop {crop}, {clip_len}-frame clips: {seconds:.2f} s/step"
                  + (f", peak {peak_gib(device):.1f} GiB" if device.type == "cuda" else ""), flush=True)
            return
        except torch.cuda.OutOfMemoryError:
            print(f"[gpu_check] distill: batch {batch} at crop {crop} is out of memory; halving", flush=True)
            out.setdefault("distill_oom_batches", []).append(batch)
            batch //= 2
            del models
    out["distill"] = {"error": "out of memory at batch 1"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU, small sizes (a test of the script)")
    p.add_argument("--crop", type=int, default=512, help="HR crop of the distillation step (px)")
    p.add_argument("--batch", type=int, default=8, help="clips per distillation step (the paper's 8)")
    args = p.parse_args(argv)
    global REPEAT
    REPEAT = 1 if args.smoke else 3

    from models.presets import build_random_bundle

    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.smoke:
        raise SystemExit("gpu_check: no CUDA device (run with --smoke to check the script on the CPU)")
    arch, latent, flow, crop, batch = (("tiny", 16, "tiny", 64, 1) if args.smoke
                                       else ("sd-x4-random", 128, "full", args.crop, args.batch))
    dtype = torch.bfloat16
    out: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "architecture": arch, "torch": torch.__version__}
    t0 = time.perf_counter()
    bundle = build_random_bundle(arch, seed=0)
    check_unet(bundle, latent, device, dtype, out)
    check_vae(bundle, latent, device, out)
    from models.flow import build, flow_preset

    flow_net = build(flow_preset(flow, "drfa"))
    check_restore(build_random_bundle(arch, seed=0), flow_net, latent, 2 if args.smoke else 8, device, dtype, out)
    check_drfa(flow, 1 if args.smoke else 8, 64 if args.smoke else 256, device, out)
    check_distill(arch, batch, crop, 3, device, dtype, out)
    out["seconds"] = time.perf_counter() - t0
    print("GPU_CHECK " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

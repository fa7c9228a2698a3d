"""Training the x4 upscaler prior (the distillation teacher), with Ray Train + DeepSpeed.

Read top to bottom:
  1. `PriorTrainConfig` - every option, a CLI flag of `jobs/train_prior.py`.
  2. data (`pipelines.train.prior_data`): `(lq, hq)` frame patches, from WebDataset shards
     or, for tests and benchmarks, from the sample videos held in memory (`samples:` sources).
  3. objectives (`pipelines.train.prior_objectives`, no Ray): `vae_objective` (L1 + small KL
     + LR anchor) and `diffusion_objective` (the x4 upscaler's: v-prediction, noise-augmented
     low-res input passed as class label; for the small prior also the few-step sampler's own
     inputs); `prior_step` runs one optimisation step of a stage.
  4. `train_loop_per_worker` - per Ray Train worker: engines, resume, stages, checkpoints.
  5. `train_prior` - the driver: runs the trainer, copies the export to `cfg.out`.

Stages. A pretrained init (`sd-x4`, or a folder from an earlier run) fine-tunes the UNet
only; its VAE stays frozen. `--init tiny` starts from random weights, so its VAE must be
learnt first: `vae_steps` steps train the whole VAE, then the encoder is frozen (the latent
space and its scaling factor, fitted at that point as `1 / std(latents)`, stay fixed under
the UNet) and the UNet trains; with `joint_decoder` the decoder keeps training on its
reconstruction loss during the UNet stage (it is the part that turns latents into pixels:
on a CPU budget it needs every step it can get).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import torch

from models.pixel_codec import module_device
from models.upscaler.config import UpscalerConfig, check_timesteps
from pipelines.common import storage
from pipelines.train import common as tc
from pipelines.train.prior_data import batches
from pipelines.train.prior_objectives import (
    decoder_objective,
    diffusion_objective,
    encode_latents,
    vae_objective,
)


@dataclasses.dataclass(frozen=True)
class PriorTrainConfig(tc.TrainRunConfig):
    shards: str = "runs/demo/shards"     # WebDataset shards (local or s3://), or "samples:bikes,carphone,..."
    out: str = "runs/prior"              # export folder (hub layout: unet/ vae/ scheduler/ ...) for --teacher
    # "small" (random, pixel-space: the CPU prior that restores), "tiny" (random, latent with a
    # VAE learnt first), "sd-x4" (hub), or a local prior folder to fine-tune
    init: str = "tiny"
    prompt: str = ""                     # the one fixed prompt (sd-x4: CLIP-encoded once)
    steps: int = 2000                    # optimizer steps in all, the VAE stage included
    vae_steps: int = -1                  # of which VAE-only first; -1: steps // 4 for tiny, 0 for a pretrained init
    joint_decoder: int = -1              # 1: the decoder trains on in the UNet stage, 0: no; -1: 1 for tiny only
    batch_size: int = 8                  # frames per worker per step (DeepSpeed micro-batch)
    patch: int = 64                      # HR training patch (px); the UNet sees patch / 4 latents
    vae_crop: int = 32                   # HR crop for the VAE losses (px, 0: whole patch): 4x cheaper at 32
    degrade: str = "light"               # degradation preset of the low-res input (clean/light/medium/heavy)
    lr: float = 5e-4                     # UNet AdamW peak lr (tiny from scratch; use ~1e-5 to fine-tune sd-x4)
    vae_lr: float = 1e-3                 # VAE AdamW peak lr
    weight_decay: float = 1e-2           # AdamW weight decay (diffusers' training examples)
    warmup: float = 0.02                 # share of a stage's steps with linear lr warm-up
    final_lr: float = 0.1                # cosine decay to this fraction of the peak at the end of a stage
    grad_clip: float = 1.0               # gradient norm clip (diffusers' examples)
    max_noise_level: int = 350           # low-res augmentation level ~ U[0, max) (SD x4 training: 350)
    # share of each batch drawn at t in [high_t_from, 999], the rest ~ U[0, 999] (measured on the
    # small prior: 0.5 and 0.8 did not help, hence 0; --sampler-share is what helps)
    high_t_share: float = 0.0
    high_t_from: int = 750               # lower end of those timesteps
    # share of each batch drawn as the few-step sampler feeds the UNet: a step k of
    # --sampler-timesteps, x_t = pure noise (k = 0) or this UNet's own x0 re-noised (k > 0), loss on
    # x0; -1: 0.5 for a small (x0-predicting) prior (measured: 4-step x0 sampler -0.19 -> +0.14 dB
    # vs bicubic at 500 steps), else 0
    sampler_share: float = -1.0
    sampler_timesteps: tuple[int, ...] = UpscalerConfig.student_timesteps   # the student's schedule (the paper's T_student)
    kl_weight: float = 1e-6              # KL per latent element vs L1 per pixel (LDM's order of magnitude)
    anchor_weight: float = -1.0          # pull latent ch 0..2 to the 4x4 box average; -1: 1 for tiny, else 0
    sample_posterior: bool = False       # VAE recon from a posterior sample; False: its mode (as encode() in use)
    scale_batches: int = 8               # batches to fit the VAE scaling factor 1/std(latents) on
    loader_workers: int = 1              # DataLoader worker processes per Ray worker (shards)
    seed: int = 0                        # model init, noise and data order (rank added)


def _predicts_x0(init: str) -> bool:
    """The small architecture, or a local prior folder whose scheduler predicts x0 (a small prior)."""
    if init == "small":
        return True
    url = storage.join(init, "scheduler", "scheduler_config.json")
    return storage.exists(url) and json.loads(storage.read_text(url)).get("prediction_type") == "sample"


def resolve(cfg: PriorTrainConfig) -> PriorTrainConfig:
    """Fill the "auto" fields from the init: tiny trains its VAE, a pretrained prior does not."""
    tiny = cfg.init == "tiny"                    # small: a lossless codec, nothing to learn there
    vae_steps = cfg.vae_steps if cfg.vae_steps >= 0 else (cfg.steps // 4 if tiny else 0)
    joint = int(tiny) if cfg.joint_decoder < 0 else int(bool(cfg.joint_decoder))
    if cfg.patch % 16 or (cfg.vae_crop and (cfg.vae_crop % 4 or cfg.vae_crop > cfg.patch)):
        raise ValueError(f"patch ({cfg.patch}) must be a multiple of 16 and vae_crop ({cfg.vae_crop}) "
                         "a multiple of 4 no larger than patch")
    if not 0 <= vae_steps < cfg.steps:
        raise ValueError(f"vae_steps ({vae_steps}) must leave UNet steps: 0 <= vae_steps < steps ({cfg.steps})")
    if not 0 < cfg.max_noise_level <= 1000:
        raise ValueError(f"max_noise_level must be in (0, 1000], got {cfg.max_noise_level}")
    anchor = cfg.anchor_weight if cfg.anchor_weight >= 0 else float(tiny)
    if not 0 <= cfg.high_t_share <= 1 or not 0 <= cfg.high_t_from <= 999:
        raise ValueError(f"high_t_share ({cfg.high_t_share}) must be in [0, 1] and high_t_from "
                         f"({cfg.high_t_from}) in [0, 999]")
    share = cfg.sampler_share if cfg.sampler_share >= 0 else (0.5 if _predicts_x0(cfg.init) else 0.0)
    if share > 1:
        raise ValueError(f"sampler_share must be <= 1 (or -1: auto), got {cfg.sampler_share}")
    check_timesteps(cfg.sampler_timesteps, "sampler_timesteps")
    return dataclasses.replace(cfg, vae_steps=vae_steps, joint_decoder=joint, anchor_weight=anchor,
                               sampler_share=share)


# --------------------------------------------------------------------------- models


def tiny_prior_vae_config() -> dict:
    """The tiny prior's VAE: `models.presets.TINY_VAE` with a 16-channel full-resolution level
    (2.4x fewer FLOPs) and no mid-block attention (half the CPU time of a training step for
    ~1% of its FLOPs): on a 20-minute CPU budget, steps matter more than width."""
    from models.presets import TINY_VAE

    return {**TINY_VAE, "block_out_channels": (16, 32, 64), "mid_block_add_attention": False}


def zero_residual_branches(model: torch.nn.Module) -> torch.nn.Module:
    """Zero the last conv of every ResNet block (in place): each block starts as the identity,
    so a from-scratch VAE starts as a shallow network and learns faster early on (Goyal et
    al. 2017's zero-gamma; one trial here: +0.4 dB after 300 decoder steps)."""
    from diffusers.models.resnet import ResnetBlock2D

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ResnetBlock2D):
                m.conv2.weight.zero_()
                m.conv2.bias.zero_()
    return model


def build_prior(init: str, prompt: str = "", seed: int = 0):
    """`UpscalerBundle` to train: "tiny" (random: `models.presets`' tiny UNet and
    `tiny_prior_vae_config()`), "sd-x4" (hub) or a folder from an earlier export."""
    from diffusers import AutoencoderKL

    from models.presets import SD_X4_REPO, build_random_bundle, load_bundle

    if init == "small":
        bundle = build_random_bundle("small", seed=seed, prompt=prompt)
    elif init == "tiny":
        bundle = build_random_bundle("tiny", seed=seed, prompt=prompt)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 2)
            bundle.vae = zero_residual_branches(AutoencoderKL(**tiny_prior_vae_config()))
    else:
        bundle = load_bundle(SD_X4_REPO if init == "sd-x4" else init, prompt=prompt)
    bundle.unet.train().requires_grad_(True)
    bundle.vae.train().requires_grad_(True)
    return bundle


def vae_param_groups(vae, lr: float, weight_decay: float) -> list[dict]:
    """Encoder side and decoder side as two groups, so the encoder can be frozen (lr 0)."""
    enc = [p for n, p in vae.named_parameters() if n.startswith(("encoder.", "quant_conv."))]
    dec = [p for n, p in vae.named_parameters() if not n.startswith(("encoder.", "quant_conv."))]
    return [{"params": enc, "lr": lr, "base_lr": lr, "weight_decay": weight_decay, "name": "encoder"},
            {"params": dec, "lr": lr, "base_lr": lr, "weight_decay": weight_decay, "name": "decoder"}]


def plain_engines(bundle, cfg: PriorTrainConfig) -> dict:
    """{"unet": ..., "vae": ...} PlainEngines with the job's AdamW settings."""
    unet_opt = torch.optim.AdamW([{"params": list(bundle.unet.parameters()), "lr": cfg.lr, "base_lr": cfg.lr,
                                   "name": "unet"}], weight_decay=cfg.weight_decay)
    engines = {"unet": tc.PlainEngine(bundle.unet, unet_opt, cfg.grad_clip)}
    if any(True for _ in bundle.vae.parameters()):     # the small prior's codec has nothing to train
        vae_opt = torch.optim.AdamW(vae_param_groups(bundle.vae, cfg.vae_lr, cfg.weight_decay))
        engines["vae"] = tc.PlainEngine(bundle.vae, vae_opt, cfg.grad_clip)
    return engines


@dataclasses.dataclass
class PriorParts:
    """What the step needs besides the engines (schedulers are stateless for add_noise)."""

    scheduler: object
    low_res_scheduler: object
    prompt_embeds: torch.Tensor
    scaling: float                 # the VAE scaling factor in use (fitted after the VAE stage)
    vae: object = None             # the frozen VAE when no VAE engine trains (pretrained init)


def prior_step(engines: dict, parts: PriorParts, lq: torch.Tensor, hq: torch.Tensor, stage: str,
               cfg: PriorTrainConfig) -> dict:
    """One optimisation step of `stage` ("vae" or "unet") on (lq, hq) frames. The engines are
    DeepSpeed engines or `PlainEngine`s; in the "unet" stage the VAE engine (when present and
    `cfg.joint_decoder`) also takes a decoder step on the frozen encoder's latents."""
    if stage == "vae":
        vae = engines["vae"]
        loss, metrics = vae_objective(vae.module, hq, cfg)
        vae.backward(loss)
        vae.step()
        return metrics
    if stage != "unet":
        raise ValueError(f"stage must be 'vae' or 'unet', got {stage!r}")
    unet = engines["unet"]
    vae_module = engines["vae"].module if "vae" in engines else parts.vae
    latents = encode_latents(vae_module, hq, parts.scaling, lq)
    loss, metrics = diffusion_objective(unet, latents, lq, parts.scheduler, parts.low_res_scheduler,
                                        parts.prompt_embeds, cfg.max_noise_level, cfg.high_t_share, cfg.high_t_from,
                                        cfg.sampler_share, cfg.sampler_timesteps)
    unet.backward(loss)
    unet.step()
    if cfg.joint_decoder and "vae" in engines:
        dloss, dmetrics = decoder_objective(engines["vae"].module, latents, hq, parts.scaling, cfg.vae_crop)
        engines["vae"].backward(dloss)
        engines["vae"].step()
        metrics.update(dmetrics)
    metrics["latent_std"] = float(latents.std())
    return metrics


@torch.no_grad()
def fit_scaling_factor(vae, hq_batches: list[torch.Tensor]) -> float:
    """1 / std of the posterior-mode latents (LDM's rule), averaged over all Ray workers."""
    device = module_device(vae)                  # nccl reduces device tensors only
    s = torch.zeros(3, dtype=torch.float64, device=device)
    for hq in hq_batches:
        z = encode_latents(vae, hq.to(device), 1.0).double()
        s += torch.stack([z.sum(), (z * z).sum(), torch.tensor(float(z.numel()), dtype=torch.float64, device=device)])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(s)
    total, sq, n = s.tolist()
    return float(1.0 / math.sqrt(max(sq / n - (total / n) ** 2, 1e-12)))


# --------------------------------------------------------------------------- export


def export_prior(bundle, unet_weights: dict, vae_weights: dict, scaling: float, folder: str) -> str:
    """`save_pretrained` the trained weights in the hub layout that `UpscalerBundle.from_pretrained`
    (and `jobs/distill.py --teacher`) reads; the fitted scaling factor goes into vae/config.json."""
    from diffusers import UNet2DConditionModel

    from models.pixel_codec import fresh_codec
    from models.upscaler.bundle import UpscalerBundle

    unet = UNet2DConditionModel.from_config(bundle.unet.config)
    unet.load_state_dict(unet_weights)
    vae = fresh_codec(bundle.vae)
    vae.load_state_dict(vae_weights)
    vae.register_to_config(scaling_factor=float(scaling))
    out = UpscalerBundle(unet=unet.eval(), vae=vae.eval(), scheduler=bundle.scheduler,
                         low_res_scheduler=bundle.low_res_scheduler,
                         prompt_embeds=bundle.prompt_embeds, prompt=bundle.prompt)
    return str(out.save_pretrained(folder))


def stage_of(step: int, cfg: PriorTrainConfig) -> str:
    """Step index (0-based) -> "vae" | "unet" (cfg resolved)."""
    return "vae" if step < cfg.vae_steps else "unet"


def schedule_lrs(engines: dict, step: int, cfg: PriorTrainConfig) -> dict:
    """Set this step's learning rates (warm-up + cosine per stage; encoder frozen after its stage)."""
    lrs = {}
    if stage_of(step, cfg) == "vae":
        lrs["vae_lr"] = tc.set_lr(engines["vae"].optimizer, tc.lr_multiplier(step / max(1, cfg.vae_steps),
                                                                        cfg.warmup, cfg.final_lr))
        return lrs
    progress = (step - cfg.vae_steps) / max(1, cfg.steps - cfg.vae_steps)
    mult = tc.lr_multiplier(progress, cfg.warmup, cfg.final_lr)
    lrs["lr"] = tc.set_lr(engines["unet"].optimizer, mult)
    if "vae" in engines and cfg.joint_decoder:
        lrs["vae_lr"] = tc.set_lr(engines["vae"].optimizer, mult, frozen=("encoder",))
    return lrs


# --------------------------------------------------------------------------- Ray Train


def _engines(bundle, cfg: PriorTrainConfig) -> dict:
    """DeepSpeed engines: the UNet always; the VAE when it trains (fp32: the x4 VAE is
    known to misbehave in half precision, and the tiny one costs nothing extra)."""
    ds = tc.load_deepspeed_config(cfg.deepspeed_config, cfg.batch_size, cfg.use_gpu, cfg.zero_stage,
                                  grad_clip=cfg.grad_clip)
    unet_opt = torch.optim.AdamW([{"params": list(bundle.unet.parameters()), "lr": cfg.lr, "base_lr": cfg.lr,
                                   "name": "unet"}], weight_decay=cfg.weight_decay)
    engines = {"unet": tc.init_engine(bundle.unet, unet_opt, ds)[0]}
    if cfg.vae_steps > 0 or cfg.joint_decoder:
        vae_ds = json.loads(json.dumps(ds))
        for key in ("bf16", "fp16"):
            vae_ds.setdefault(key, {})["enabled"] = False
        vae_opt = torch.optim.AdamW(vae_param_groups(bundle.vae, cfg.vae_lr, cfg.weight_decay))
        engines["vae"] = tc.init_engine(bundle.vae, vae_opt, vae_ds)[0]
    return engines


def train_loop_per_worker(config: dict) -> None:
    import ray.train

    cfg = resolve(PriorTrainConfig(**config))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)                  # same init on every rank
    bundle = build_prior(cfg.init, cfg.prompt, cfg.seed)

    # 1. Engines; the VAE is a frozen module on the device when it does not train.
    engines = _engines(bundle, cfg)
    device = engines["unet"].device
    if "vae" not in engines:
        bundle.vae.to(device).eval().requires_grad_(False)
    parts = PriorParts(bundle.scheduler, bundle.low_res_scheduler, bundle.prompt_embeds.to(device),
                       float(bundle.vae.config.scaling_factor), vae=bundle.vae)

    # 2. Resume (worker failure, or the same run name started again).
    state = tc.restore_checkpoint(engines)
    step, epoch = int(state.get("step", 0)), int(state.get("epoch", 0))
    parts.scaling = float(state.get("scaling", parts.scaling))
    fitted = "scaling" in state or cfg.vae_steps == 0   # the latent scale in use is final
    if step and rank == 0:
        print(f"[train_prior] resumed at step {step} (scaling {parts.scaling:.4f})", flush=True)
    torch.manual_seed(cfg.seed + 7919 * rank + step)  # noise differs per rank and after a resume

    # 3. Train: VAE stage, scaling-factor fit, UNet stage (+ decoder).
    total, resumed_from = cfg.steps, step
    data = batches(cfg, rank, world, epoch)
    t0, t_last, metrics = time.time(), time.time(), {}
    while step < total:
        if step == cfg.vae_steps and not fitted:
            hqs = [next(data)[2].to(device) for _ in range(cfg.scale_batches)]
            parts.scaling, fitted = fit_scaling_factor(engines["vae"].module, hqs), True
            if rank == 0:
                print(f"[train_prior] VAE stage done; scaling factor {parts.scaling:.4f}", flush=True)
        epoch, lq, hq = next(data)
        lrs = schedule_lrs(engines, step, cfg)
        stage = stage_of(step, cfg)
        metrics = prior_step(engines, parts, lq.to(device), hq.to(device), stage, cfg)
        step += 1
        tc.maybe_inject_failure(cfg, step)
        metrics.update(lrs, step=step, epoch=epoch, stage=stage, scaling=parts.scaling, resumed_from=resumed_from,
                       frames_per_s=(step - resumed_from) * cfg.batch_size * world / (time.time() - t0))
        last = step == total
        if step % cfg.checkpoint_every == 0 or last:
            weights = {k: tc.state_dict_for_export(e) for k, e in engines.items()}
            vae_w = weights.get("vae") or {k: v.detach().float().cpu() for k, v in bundle.vae.state_dict().items()}
            scaling = parts.scaling
            tc.save_checkpoint(engines, step, metrics,
                               export=lambda d, u=weights["unet"], v=vae_w, sc=scaling: export_prior(bundle, u, v, sc, d),
                               extra_state={"epoch": epoch, **({"scaling": scaling} if fitted else {})})
        elif step % cfg.report_every == 0:
            ray.train.report(metrics)
        if rank == 0 and (step % cfg.report_every == 0 or last):
            losses = " ".join(f"{k} {metrics[k]:.4f}" for k in ("vae_l1", "anchor", "unet_loss") if k in metrics)
            print(f"[train_prior] step {step}/{total} {stage}: {losses} "
                  f"({cfg.report_every / max(1e-9, time.time() - t_last):.2f} steps/s)", flush=True)
            t_last = time.time()


def train_prior(cfg: PriorTrainConfig) -> dict:
    """Run the trainer; copy the final export to `cfg.out`. Returns a summary."""
    t0 = time.time()
    cfg = resolve(tc.absolute_paths(cfg, "shards", "init"))
    result = tc.run(train_loop_per_worker, dataclasses.asdict(cfg), cfg)
    if result.error:
        raise RuntimeError(f"prior training failed: {result.error}")
    with result.checkpoint.as_directory() as folder:
        exported = os.path.join(folder, "export")
        storage.upload_tree(exported, cfg.out)
    m = result.metrics
    summary = {"steps": m.get("step"), "resumed_from": m.get("resumed_from"), "vae_steps": cfg.vae_steps,
               "unet_loss": m.get("unet_loss"),
               "vae_l1": m.get("vae_l1"), "scaling": m.get("scaling"), "export": cfg.out,
               "seconds": round(time.time() - t0, 1)}
    print(f"[train_prior] done: {json.dumps(summary)}", flush=True)
    return summary

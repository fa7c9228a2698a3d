"""Named configurations of the upscaler and its discriminator.

- `sd-x4`: `stabilityai/stable-diffusion-x4-upscaler` (or a local copy in the same layout),
  loaded with `from_pretrained`.
- `sd-x4-random`: the same architecture built from its config with random weights (no
  download): GPU timing and memory checks only.
- `small`: the CPU-scale prior that restores (d2vr's default for training on a CPU): a UNet
  diffusing in *pixel* space through the lossless `models.pixel_codec` (space-to-depth x4:
  48 channels at the low-res size, exact reconstruction), so no VAE has to be learnt and
  none caps the quality. The latent is the HR frame minus the bicubic x4 of the low-res
  input (`residual`), and the UNet predicts x0 ("sample"), so an untrained prior restores
  bicubic and training learns a correction (v-prediction on this latent stayed ~6 dB below
  bicubic after 1,400 steps: it must cancel the noise exactly before any x0 appears). Same
  noise schedule, samplers and conditioning as sd-x4 (noise-level class labels, fixed prompt
  embedding); 51 input channels (48 + low-res 3).
- `tiny`: a small model of the same architecture (UNet reading [latent 4, low-res 3] with
  noise-level class labels, v-prediction; f4 VAE with 3 levels, 4 latent channels), built
  in code and saved with `save_pretrained` so that tests and jobs load it through the same
  `UpscalerBundle.from_pretrained` path as sd-x4. Sized for CPU: on 2 cores a UNet
  forward+backward on 6 16x16 latents takes ~0.14 s and a VAE decode forward+backward of
  6 64x64 frames ~0.3 s, so a training job gets ~1000 steps in 20 minutes.

The sd-x4 configs below transcribe `configs/stable-diffusion/x4-upscaling.yaml` of
Stability-AI/stablediffusion (model_channels 256, mult (1,2,2,4), attention at the three
lower levels, self-attention disabled there, 8 heads, linear projections, context 1024,
1000 noise-level classes; VAE ch 128, mult (1,2,4); v-prediction with the "linear"
0.0001..0.02 schedule, i.e. diffusers' scaled_linear) in diffusers' vocabulary.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

from models.discriminator import DiscriminatorConfig
from models.pixel_codec import PixelUnshuffleCodec
from models.upscaler.bundle import UpscalerBundle
from models.upscaler.config import SD_X4_REPO, UpscalerConfig
from models.upscaler.video import VideoUpscaler

SD_X4_UNET = dict(
    sample_size=128, in_channels=7, out_channels=4, layers_per_block=2,
    block_out_channels=(256, 512, 512, 1024),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    only_cross_attention=(True, True, True, False), attention_head_dim=8, cross_attention_dim=1024,
    use_linear_projection=True, num_class_embeds=1000, norm_num_groups=32,
)
SD_X4_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512),
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    norm_num_groups=32, sample_size=256, scaling_factor=0.08333,
)
SD_X4_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear",
    prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
)
SD_X4_LOW_RES_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear",
)
SD_X4_PROMPT_SHAPE = (1, 77, 1024)

TINY_UNET = dict(
    sample_size=16, in_channels=7, out_channels=4, layers_per_block=2,
    block_out_channels=(32, 64, 64),                     # /4 inside the UNet: 16x16 latents -> 4x4
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    only_cross_attention=(False, True, True), attention_head_dim=8, cross_attention_dim=32,
    use_linear_projection=True, num_class_embeds=1000,
    norm_num_groups=8,                                   # >1 channel per group: with 32 groups on 32 channels
)                                                        # GroupNorm would cancel the per-channel time embedding
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
    block_out_channels=(32, 64, 64),                     # 3 levels = x4, as the sd-x4 VAE
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    norm_num_groups=8, sample_size=64, scaling_factor=0.08333,   # 8 groups: not instance norm at 32 ch
)
TINY_PROMPT_SHAPE = (1, 8, 32)                           # (1, tokens, cross_attention_dim)

# residual=True: the UNet diffuses HR minus bicubic(LR); scaling_factor 10 ~ 1 / std of that residual
# on the sample clips (0.067 light .. ~0.1 heavy, in [-1, 1] units), LDM's unit-variance rule: the
# UNet's errors shrink 10x on the way to pixels (measured, 630 steps: -0.34 dB vs bicubic at 10,
# -0.96 dB at 1.0)
SMALL_CODEC = dict(downscale=4, in_channels=3, scaling_factor=10.0, residual=True)
SMALL_UNET = dict(
    sample_size=32, in_channels=48 + 3, out_channels=48, layers_per_block=2,
    block_out_channels=(32, 48, 64),                     # 1.93 M parameters; /4 inside: 16x16 -> 4x4
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    only_cross_attention=(False, False, True), attention_head_dim=8, cross_attention_dim=32,
    use_linear_projection=True, num_class_embeds=1000, norm_num_groups=16,
)
SMALL_PROMPT_SHAPE = TINY_PROMPT_SHAPE
# x0-prediction: the residual latent is small, and v or eps would make the UNet cancel the noise
# to the last digit before any x0 appears (measured: v-prediction x0 ~6 dB below bicubic after
# 1,400 steps); predicting x0 directly starts at bicubic (zero output) and learns a correction
SMALL_SCHEDULER = dict(SD_X4_SCHEDULER, prediction_type="sample")

RANDOM_ARCHITECTURES = ("small", "tiny", "sd-x4-random")


def upscaler_preset(name: str, **overrides) -> UpscalerConfig:
    """`UpscalerConfig` for "sd-x4", "sd-x4-random" or "tiny" (fields overridable)."""
    base = {
        "sd-x4": UpscalerConfig(pretrained=SD_X4_REPO),
        "sd-x4-random": UpscalerConfig(pretrained="sd-x4-random"),
        "small": UpscalerConfig(pretrained="small"),
        "tiny": UpscalerConfig(pretrained="tiny"),
    }
    if name not in base:
        raise ValueError(f"unknown upscaler preset {name!r}; choose from {sorted(base)}")
    return dataclasses.replace(base[name], **overrides)


def discriminator_preset(name: str, **overrides) -> DiscriminatorConfig:
    """Head sizes for the discriminator on the "tiny" or "sd-x4" prior."""
    base = {
        "sd-x4": DiscriminatorConfig(head_channels=128),
        "sd-x4-random": DiscriminatorConfig(head_channels=128),
        "small": DiscriminatorConfig(head_channels=64),
        "tiny": DiscriminatorConfig(head_channels=32),
    }
    if name not in base:
        raise ValueError(f"unknown discriminator preset {name!r}; choose from {sorted(base)}")
    return dataclasses.replace(base[name], **overrides)


def build_random_bundle(architecture: str = "tiny", seed: int = 0, prompt: str = "") -> UpscalerBundle:
    """Random-weight bundle of a built-in architecture (`RANDOM_ARCHITECTURES`; deterministic in seed)."""
    if architecture == "small":
        unet_cfg, vae_cfg, shape = SMALL_UNET, None, SMALL_PROMPT_SHAPE
    elif architecture == "tiny":
        unet_cfg, vae_cfg, shape = TINY_UNET, TINY_VAE, TINY_PROMPT_SHAPE
    elif architecture in ("sd-x4-random", "sd-x4"):
        unet_cfg, vae_cfg, shape = SD_X4_UNET, SD_X4_VAE, SD_X4_PROMPT_SHAPE
    else:
        raise ValueError(f"unknown architecture {architecture!r}; choose from {RANDOM_ARCHITECTURES}")
    fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_cfg)
        vae = PixelUnshuffleCodec(**SMALL_CODEC) if vae_cfg is None else AutoencoderKL(**vae_cfg)
        if architecture == "small":            # LDM's zero output conv: x0 = 0 at the start, so the
            torch.nn.init.zeros_(unet.conv_out.weight)   # residual prior starts at bicubic
            torch.nn.init.zeros_(unet.conv_out.bias)
        gen = torch.Generator().manual_seed(seed + 1)
        embeds = torch.randn(shape, generator=gen)       # the fixed "prompt" of a random model
    scheduler = DDIMScheduler(**(SMALL_SCHEDULER if architecture == "small" else SD_X4_SCHEDULER))
    return UpscalerBundle(unet=unet.eval(), vae=vae.eval(), scheduler=scheduler,
                          low_res_scheduler=DDPMScheduler(**SD_X4_LOW_RES_SCHEDULER),
                          prompt_embeds=embeds, prompt=prompt)


def save_tiny_pretrained(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Build the tiny model and `save_pretrained` it to `directory` (hub layout)."""
    return build_random_bundle("tiny", seed=seed).save_pretrained(directory)


def load_bundle(pretrained: str, prompt: str = "", seed: int = 0, negative_prompt: str = "",
                **kwargs) -> UpscalerBundle:
    """`pretrained` = a built-in random architecture, a hub id or a local directory. A built-in
    architecture has no text encoder: its one seeded embedding stands for any prompt."""
    if pretrained in RANDOM_ARCHITECTURES:
        return build_random_bundle(pretrained, seed=seed, prompt=prompt)
    return UpscalerBundle.from_pretrained(pretrained, prompt=prompt, negative_prompt=negative_prompt, **kwargs)


def load_upscaler(cfg: UpscalerConfig, flow_net=None, *, seed: int = 0, student_unet=None,
                  device="cpu", dtype=torch.float32, vae_dtype=None):
    """A `VideoUpscaler` of `cfg.pretrained`, loaded (or, for "small"/"tiny"/"sd-x4-random",
    built); `student_unet` may be a module or a save_pretrained path."""
    bundle = load_bundle(cfg.pretrained, prompt=cfg.prompt, negative_prompt=cfg.negative_prompt, seed=seed)
    if student_unet is not None and not isinstance(student_unet, torch.nn.Module):
        student_unet = UNet2DConditionModel.from_pretrained(str(student_unet))
    return VideoUpscaler(bundle, cfg, flow_net, student_unet=student_unet, device=device, dtype=dtype,
                         vae_dtype=vae_dtype)

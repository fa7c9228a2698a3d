"""The prior's training objectives (no Ray, no I/O): the VAE's (`vae_objective`,
`decoder_objective`) and the UNet's (`diffusion_objective`: the x4 upscaler's loss, plus the
few-step sampler's own inputs as training draws), on latents from `encode_latents`.

LR anchor (tiny only, `anchor_weight`). The x4 latent lives at the low-res size; pulling
latent channels 0..2 towards the 4x4 box average of the frame makes them the low-res image
the UNet already receives, so the UNet learns a residual (channel 3 and the corrections)
instead of rediscovering the image, and the sampler has little left to invent there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.pixel_codec import module_dtype
from models.upscaler.config import UpscalerConfig


def _random_crop(hq: torch.Tensor, crop: int, scale: int) -> tuple[torch.Tensor, int, int]:
    H, W = hq.shape[-2:]
    if not crop or crop >= min(H, W):
        return hq, 0, 0
    y = int(torch.randint((H - crop) // scale + 1, (1,))) * scale
    x = int(torch.randint((W - crop) // scale + 1, (1,))) * scale
    return hq[..., y:y + crop, x:x + crop], y, x


def vae_objective(vae, hq: torch.Tensor, cfg) -> tuple[torch.Tensor, dict]:
    """Whole-VAE loss on (B, 3, H, W) in [0, 1]: L1 + kl_weight KL + anchor_weight anchor
    (`cfg`: the `PriorTrainConfig`)."""
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    x = _random_crop(hq, cfg.vae_crop, scale)[0] * 2 - 1                # [-1, 1]
    post = vae.encode(x).latent_dist
    z = post.sample() if cfg.sample_posterior else post.mode()          # (B, 4, H/s, W/s)
    rec = vae.decode(z).sample
    l1 = (rec.float() - x).abs().mean()
    kl = post.kl().mean() / z[0].numel()                                # per latent element
    loss = l1 + cfg.kl_weight * kl
    metrics = {"vae_l1": float(l1.detach()), "kl": float(kl.detach())}
    if cfg.anchor_weight > 0:
        anchor = (post.mode()[:, :3].float() - F.avg_pool2d(x, scale)).abs().mean()
        loss = loss + cfg.anchor_weight * anchor
        metrics["anchor"] = float(anchor.detach())
    return loss, metrics


def decoder_objective(vae, latents: torch.Tensor, hq: torch.Tensor, scaling: float, crop: int
                      ) -> tuple[torch.Tensor, dict]:
    """Decoder-only L1 on (a crop of) frozen-encoder latents (B, 4, h, w) -> hq (B, 3, s h, s w)."""
    scale = hq.shape[-1] // latents.shape[-1]
    target, y, x = _random_crop(hq, crop, scale)
    z = latents[..., y // scale:y // scale + target.shape[-2] // scale,
                x // scale:x // scale + target.shape[-1] // scale] / scaling
    rec = vae.decode(z).sample
    l1 = (rec.float() - (target * 2 - 1)).abs().mean()
    return l1, {"vae_l1": float(l1.detach())}


@torch.no_grad()
def encode_latents(vae, hq: torch.Tensor, scaling: float, lq: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3, H, W) [0, 1] -> (B, 4, H/s, W/s) scaled latents: the posterior mode, as
    `VideoUpscaler.encode` (the distillation's real latents) takes them; a residual codec's
    (the small prior's) relative to the bicubic x4 of `lq` (B, 3, H/s, W/s)."""
    from models.pixel_codec import latent_base

    dtype = module_dtype(vae)
    z = vae.encode((hq * 2 - 1).to(dtype)).latent_dist.mode().float() * scaling
    base = latent_base(vae, lq, scaling)
    return z if base is None else z - base


def diffusion_objective(unet, latents: torch.Tensor, lq: torch.Tensor, scheduler, low_res_scheduler,
                        prompt_embeds: torch.Tensor, max_noise_level: int, high_t_share: float = 0.0,
                        high_t_from: int = 750, sampler_share: float = 0.0,
                        sampler_timesteps: tuple[int, ...] = UpscalerConfig.student_timesteps
                        ) -> tuple[torch.Tensor, dict]:
    """The x4 upscaler's training loss on scaled latents (B, 4, h, w) and low-res lq (B, 3, h, w).
    `unet`: the UNet, or an engine wrapping it (the forward then goes through DeepSpeed).

    x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, t ~ U{0..T-1}; the low-res frame (in [-1, 1]) is
    noised with the low_res_scheduler at level ~ U{0..max-1}, which is also the class label;
    the UNet reads [x_t, noised low-res] and is regressed (MSE) on v = sqrt(ab) eps -
    sqrt(1 - ab) x0 (or on eps for an epsilon-prediction checkpoint, on x0 for a "sample" one).

    Sampler draws (`sampler_share` of the batch): x_t is what the few-step sampler feeds the
    UNet at a uniformly drawn step of `sampler_timesteps` (`models.upscaler.sampling`: pure noise
    at the first, this UNet's own x0 re-noised later, run without gradients), and the loss is the
    MSE of the UNet's x0 against the real x0. Forward diffusion of a real frame never makes these
    inputs, so a prior trained on it alone is off its training distribution in every step of the
    few-step sampler (measured on the small prior: its x0 at t=750 from pure noise 0.5 dB below
    its x0 at t=999 from a zero input).
    """
    from models.upscaler.sampling import sampler_inputs, x0_from_output

    b, dev = latents.shape[0], latents.device
    dtype = next(unet.parameters()).dtype
    level = torch.randint(0, max_noise_level, (b,), device=dev)
    image = lq.to(dev, torch.float32) * 2 - 1
    low_res = low_res_scheduler.add_noise(image, torch.randn_like(image), level)
    embeds = prompt_embeds.to(dev, dtype)
    ab_all = scheduler.alphas_cumprod.to(dev)

    def call(x, t, rows):               # the UNet on batch rows `rows` at timesteps t (len(rows),)
        return unet(torch.cat([x, low_res[rows]], dim=1).to(dtype), t,
                    encoder_hidden_states=embeds.expand(len(rows), -1, -1),
                    class_labels=level[rows], return_dict=False)[0].float()

    eps = torch.randn_like(latents)
    n_t = scheduler.config.num_train_timesteps
    t = torch.randint(0, n_t, (b,), device=dev)
    if high_t_share > 0:
        high = torch.rand(b, device=dev) < high_t_share
        t = torch.where(high, torch.randint(high_t_from, n_t, (b,), device=dev), t)
    x_t = scheduler.add_noise(latents, eps, t)
    kind = scheduler.config.prediction_type
    if kind == "v_prediction":
        target = scheduler.get_velocity(latents, eps, t)
    elif kind == "sample":              # x0 itself (the small prior: an untrained UNet's 0 is bicubic)
        target = latents
    else:
        target = eps
    drawn = torch.zeros(b, dtype=torch.bool, device=dev)
    if sampler_share > 0:
        drawn = torch.rand(b, device=dev) < sampler_share
        if drawn.any():
            rows = drawn.nonzero().flatten()
            k = torch.randint(0, len(sampler_timesteps), (len(rows),), device=dev)

            def predict_x0(x, step_t, sub):
                tt = torch.full((len(sub),), step_t, device=dev, dtype=torch.long)
                return x0_from_output(kind, call(x, tt, rows[sub]), x, ab_all[tt].view(-1, 1, 1, 1))

            with torch.no_grad():
                x_s = sampler_inputs(predict_x0, lambda i, sub: torch.randn((len(sub), *latents.shape[1:]), device=dev),
                                     sampler_timesteps, ab_all, k)
            x_t, t = x_t.clone(), t.clone()
            x_t[rows], t[rows] = x_s, torch.tensor(sampler_timesteps, device=dev)[k]
    out = call(x_t, t, torch.arange(b, device=dev))
    per_sample = ((out - target) ** 2).flatten(1).mean(1)
    if drawn.any():                     # sampler draws: x0 space, whatever the prediction type
        x0_err = ((x0_from_output(kind, out, x_t, ab_all[t].view(-1, 1, 1, 1)) - latents) ** 2).flatten(1).mean(1)
        per_sample = torch.where(drawn, x0_err, per_sample)
    loss = per_sample.mean()
    metrics = {"unet_loss": float(loss.detach())}
    if drawn.any():
        metrics["sampler_loss"] = float(per_sample[drawn].mean().detach())
    return loss, metrics

"""Feature-based latent discriminator: the prior UNet's encoder + light per-level heads.

The paper's discriminator is "the encoder of a pre-trained UNet". A plain SD 2.1 UNet
cannot read x4-upscaler latents (different VAE, no low-res input), so the encoder here is
a trainable copy of the prior's own UNet, cut after its mid block: `conv_in`, the time and
noise-level embeddings, the down blocks and the mid block. It reads what the prior reads,
`[noised latent (4), noised low-res frame (3)]` at timestep s with the fixed prompt
embedding, so it judges a latent as a restoration *of that low-res frame* at that noise
level. (DMD2's `classify_forward` is a public example of the same idea on SD UNets.)

A head on every feature level (each down block's output and the mid block's) turns the
features into per-location logits: conv3x3 -> GroupNorm -> SiLU -> conv1x1 (1 channel).
Logits are "realness": high = looks like forward-diffused real data.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import torch
import torch.nn as nn
from diffusers import UNet2DConditionModel


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    head_channels: int = 128        # hidden width of each head (light: << the UNet's 256..1024)
    head_groups: int = 32           # GroupNorm groups in the heads (reduced to divide head_channels)
    use_mid_block: bool = True      # also a head on the mid block's output
    train_encoder: bool = True      # False: only the heads train, the encoder stays the prior's (LADD-style:
                                    # no gradients or Adam state for ~203 M sd-x4 encoder parameters)


class LogitHead(nn.Sequential):
    """(B, C, h, w) features -> (B, 1, h, w) logits."""

    def __init__(self, in_channels: int, hidden: int, groups: int):
        groups = math.gcd(groups, hidden)
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.GroupNorm(groups, hidden),
            nn.SiLU(),
            nn.Conv2d(hidden, 1, 1),
        )


def unet_encoder(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A trainable copy of `unet` without its up path (up blocks, output norm and conv)."""
    cfg = unet.config
    if cfg.class_embeddings_concat or cfg.addition_embed_type is not None or cfg.encoder_hid_dim is not None:
        raise ValueError("discriminator: UNets with concatenated class embeddings, addition "
                         "embeddings or encoder_hid_proj are not supported")
    up, norm, act, out = unet.up_blocks, unet.conv_norm_out, unet.conv_act, unet.conv_out
    try:  # do not deep-copy the up path we are about to drop
        unet.up_blocks, unet.conv_norm_out, unet.conv_act, unet.conv_out = nn.ModuleList(), None, None, None
        encoder = copy.deepcopy(unet)
    finally:
        unet.up_blocks, unet.conv_norm_out, unet.conv_act, unet.conv_out = up, norm, act, out
    encoder.requires_grad_(True)
    encoder.train()
    return encoder


class LatentDiscriminator(nn.Module):
    """D(x_s | low-res, s): list of per-level logit maps (B, 1, h_l, w_l)."""

    def __init__(self, prior_unet: UNet2DConditionModel, cfg: DiscriminatorConfig = DiscriminatorConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder = unet_encoder(prior_unet)
        widths = list(prior_unet.config.block_out_channels)
        if cfg.use_mid_block:
            widths.append(widths[-1])
        p = next(prior_unet.parameters())
        self.heads = nn.ModuleList(LogitHead(c, cfg.head_channels, cfg.head_groups) for c in widths).to(p.device)
        if not cfg.train_encoder:
            self.encoder.requires_grad_(False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def in_channels(self) -> int:
        return self.encoder.config.in_channels

    def features(self, x_t: torch.Tensor, timesteps: torch.Tensor, lowres: torch.Tensor,
                 noise_level: torch.Tensor, prompt_embeds: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features of [x_t, lowres] at `timesteps`: one per down block (+ mid)."""
        enc = self.encoder
        dtype = next(enc.parameters()).dtype
        sample = torch.cat([x_t, lowres], dim=1).to(dtype)
        if sample.shape[1] != enc.config.in_channels:
            raise ValueError(f"discriminator expects {enc.config.in_channels} input channels "
                             f"(latent + low-res), got {sample.shape[1]}")
        b = sample.shape[0]
        timesteps = torch.as_tensor(timesteps, device=sample.device)
        timesteps = timesteps.expand(b) if timesteps.dim() == 0 else timesteps
        context = prompt_embeds.to(dtype).expand(b, -1, -1)
        emb = enc.time_embedding(enc.get_time_embed(sample=sample, timestep=timesteps))
        class_emb = enc.get_class_embed(sample=sample, class_labels=noise_level)
        if class_emb is not None:
            emb = emb + class_emb
        if enc.time_embed_act is not None:
            emb = enc.time_embed_act(emb)
        h = enc.conv_in(sample)
        feats = []
        for block in enc.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
            else:
                h, _ = block(hidden_states=h, temb=emb)
            feats.append(h)
        if self.cfg.use_mid_block and enc.mid_block is not None:
            if getattr(enc.mid_block, "has_cross_attention", False):
                h = enc.mid_block(h, emb, encoder_hidden_states=context)
            else:
                h = enc.mid_block(h, emb)
            feats.append(h)
        return feats

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, lowres: torch.Tensor,
                noise_level: torch.Tensor, prompt_embeds: torch.Tensor) -> list[torch.Tensor]:
        feats = self.features(x_t, timesteps, lowres, noise_level, prompt_embeds)
        return [head(f).float() for head, f in zip(self.heads, feats)]

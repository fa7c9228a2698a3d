"""The latent discriminator: a trainable copy of the prior's encoder with per-level heads."""
from __future__ import annotations

import torch

from models.discriminator import LatentDiscriminator
from models.presets import build_random_bundle, discriminator_preset, upscaler_preset
from models.upscaler.video import VideoUpscaler
from pipelines.train.distill_step import AdversarialBatch, DistillConfig, DistillModels, discriminator_step


def tiny_parts():
    bundle = build_random_bundle("tiny", seed=0)
    up = VideoUpscaler(bundle, upscaler_preset("tiny"))
    torch.manual_seed(1)
    return up, LatentDiscriminator(up.teacher, discriminator_preset("tiny"))


def test_encoder_is_a_trainable_copy_of_the_prior_down_path():
    up, d = tiny_parts()
    prior = up.teacher.state_dict()
    enc = d.encoder.state_dict()
    assert enc and all(torch.equal(v, prior[k]) for k, v in enc.items())
    assert not any(k.startswith(("up_blocks", "conv_out", "conv_norm_out")) for k in enc)
    assert len(up.teacher.up_blocks) == 3 and up.teacher.conv_out is not None   # prior untouched
    assert all(p.requires_grad for p in d.parameters())
    assert all(not p.requires_grad for p in up.teacher.parameters())
    assert d.in_channels == 7                                                    # [latent, low-res]
    assert d.encoder.conv_in.weight.data_ptr() != up.teacher.conv_in.weight.data_ptr()


def test_logits_per_level_depend_on_timestep_and_low_res():
    up, d = tiny_parts()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    low = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    level = torch.full((2,), 20)
    t = torch.tensor([750, 250])
    with torch.no_grad():
        logits = d(x, t, low, level, up.prompt_embeds)
        assert [tuple(x.shape) for x in logits] == [(2, 1, 8, 8), (2, 1, 4, 4), (2, 1, 4, 4), (2, 1, 4, 4)]
        other_t = d(x, torch.tensor([500, 0]), low, level, up.prompt_embeds)
        other_low = d(x, t, -low, level, up.prompt_embeds)
    assert all((a - b).abs().max() > 1e-6 for a, b in zip(logits, other_t))
    assert all((a - b).abs().max() > 1e-6 for a, b in zip(logits, other_low))


def test_discriminator_loss_falls_on_fixed_real_and_fake():
    up, d = tiny_parts()
    g = torch.Generator().manual_seed(0)
    n = 4
    low = torch.rand(n, 3, 16, 16, generator=g)
    real = up.encode(torch.nn.functional.interpolate(low, scale_factor=4, mode="bicubic").clamp(0, 1))
    fake = real.roll(3, dims=-1) + 0.5 * torch.randn(real.shape, generator=g)      # fixed "student" output
    s = torch.tensor([750, 500, 250, 0])
    batch = AdversarialBatch(real, fake, s, low * 2 - 1, torch.full((n,), 20))
    models = DistillModels(up, d)
    opt = torch.optim.Adam(d.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss, metrics = discriminator_step(models, None, DistillConfig(), torch.Generator().manual_seed(0),
                                           fake=batch)                               # same noise every step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0] - 0.05, losses
    assert metrics["d_real_logit"] > metrics["d_fake_logit"]
    assert all(p.grad is None for p in up.parameters())                            # nothing else trained

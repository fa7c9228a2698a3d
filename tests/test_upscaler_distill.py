"""The distillation step functions on the tiny preset (CPU, 16x16 -> 64x64 clips)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.discriminator import LatentDiscriminator
from models.losses import TemporalLPIPS
from models.presets import build_random_bundle, discriminator_preset, upscaler_preset
from models.upscaler.video import VideoUpscaler
from pipelines.train.distill_step import (DistillConfig, DistillModels, discriminator_step,
                                          generator_step, student_fakes)


def tiny_flow_net():
    """The real tiny DRFA (random weights)."""
    from models.flow import build, flow_preset

    torch.manual_seed(0)
    return build(flow_preset("tiny", variant="drfa"))


@pytest.fixture(scope="module")
def tlpips():
    torch.manual_seed(0)
    return TemporalLPIPS(backbone="random")      # RANDOM AlexNet trunk (offline), real LPIPS heads


def make_models(tlpips=None) -> DistillModels:
    up = VideoUpscaler(build_random_bundle("tiny", seed=0), upscaler_preset("tiny"), tiny_flow_net())
    torch.manual_seed(1)
    return DistillModels(up, LatentDiscriminator(up.teacher, discriminator_preset("tiny")), tlpips)


def make_batch(b=1, t=2, seed=0):
    """Panning textured HQ clips (B, T, 3, 64, 64) and their bicubic x4-down LQ."""
    g = torch.Generator().manual_seed(seed)
    big = torch.rand(b, 3, 10, 10 + t, generator=g)
    tex = F.interpolate(big, size=(64, 64 + 4 * t), mode="bicubic", align_corners=False).clamp(0, 1)
    hq = torch.stack([tex[..., 4 * i:4 * i + 64] for i in range(t)], 1)
    lq = F.interpolate(hq.flatten(0, 1), scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)
    return {"lq": lq.unflatten(0, (b, t)), "hq": hq}


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("isolation", ["detached", "requires_grad"])
def test_generator_step_gives_no_gradient_to_the_discriminator(tlpips, isolation):
    models = make_models(tlpips)
    cfg = DistillConfig(discriminator_isolation=isolation)
    loss, metrics = generator_step(models, make_batch(), cfg, torch.Generator().manual_seed(0))
    loss.backward()
    assert set(metrics) >= {"loss", "distill", "adv_g", "tlpips"}
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["adv_g"] != 0 and metrics["tlpips"] > 0 and metrics["distill"] > 0
    assert all(p.grad is None for p in models.discriminator.parameters())
    assert all(p.requires_grad for p in models.discriminator.parameters())        # flags restored
    grads = [p.grad for p in models.upscaler.student.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    frozen = [models.upscaler.teacher, models.upscaler.vae, models.upscaler.flow_net]
    assert all(p.grad is None for m in frozen if m is not None for p in m.parameters())


def test_training_moves_student_and_discriminator_only(tlpips):
    models = make_models(tlpips)
    up, d = models.upscaler, models.discriminator
    frozen = {"teacher": up.teacher, "vae": up.vae}
    if up.flow_net is not None:
        frozen["flow"] = up.flow_net
    before = {k: snapshot(m) for k, m in frozen.items()}
    student0, d0 = snapshot(up.student), snapshot(d)
    opt_g = torch.optim.Adam(up.trainable_parameters(), lr=1e-4)
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    for step in range(2):
        batch = make_batch(seed=step)
        keep = {}
        loss, _ = generator_step(models, batch, DistillConfig(), g, keep=keep)
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        d_loss, _ = discriminator_step(models, batch, DistillConfig(), g, fake=keep["fake"])
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
    for name, m in frozen.items():
        assert same(before[name], snapshot(m)), f"{name} changed"
    assert not same(student0, snapshot(up.student))
    assert not same(d0, snapshot(d))
    # the temporal weights, zero at step 0, have started to learn
    assert up.student.conv_in.weight[:, 7:].abs().sum() > 0


def test_generator_adversarial_loss_falls_against_a_fixed_discriminator():
    models = make_models()
    cfg = DistillConfig(distill_weight=0.0, lambda_adv=1.0, lambda_tlpips=0.0)
    batch = make_batch(b=2, t=1, seed=3)
    opt = torch.optim.Adam(models.upscaler.trainable_parameters(), lr=1e-3)
    d0 = snapshot(models.discriminator)
    values = []
    for _ in range(6):
        loss, metrics = generator_step(models, batch, cfg, torch.Generator().manual_seed(0))  # same noise each step
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(metrics["adv_g"])
    # the same batch and noise every step: a fixed D's verdict on the student improves steadily
    assert all(b < a for a, b in zip(values, values[1:])) and values[-1] < values[0] - 0.003, values
    assert same(d0, snapshot(models.discriminator))


def test_discriminator_step_without_kept_fakes_and_determinism():
    models = make_models()
    batch = make_batch(b=1, t=2, seed=4)
    fakes = student_fakes(models, batch, DistillConfig(), torch.Generator().manual_seed(0))
    assert fakes.fake_x0.shape == (2, 4, 16, 16) and not fakes.fake_x0.requires_grad
    a, ma = discriminator_step(models, batch, DistillConfig(), torch.Generator().manual_seed(1))
    b, mb = discriminator_step(models, batch, DistillConfig(), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and ma == mb and 0 <= ma["d_accuracy"] <= 1


def test_bad_batches_and_configs_raise():
    models = make_models()
    with pytest.raises(ValueError, match="hq must be"):
        generator_step(models, (torch.rand(1, 2, 3, 16, 16), torch.rand(1, 2, 3, 32, 32)),
                       DistillConfig(lambda_tlpips=0.0))
    with pytest.raises(ValueError, match="tlpips"):
        generator_step(models, make_batch(), DistillConfig())                       # no T-LPIPS net
    with pytest.raises(ValueError, match="--adversarial-form"):
        DistillConfig(adversarial_form="wgan")


def _train_generator(models, batch, cfg, metric: str, steps: int = 6) -> list[float]:
    """`steps` Adam steps of the student on `generator_step` alone; the metric after each."""
    opt = torch.optim.Adam(models.upscaler.trainable_parameters(), lr=1e-3)
    values = []
    for _ in range(steps):
        loss, metrics = generator_step(models, batch, cfg, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(metrics[metric])
    return values


def test_distillation_loss_falls_when_the_student_trains_on_it():
    models = make_models()
    cfg = DistillConfig(distill_weight=1.0, lambda_adv=0.0, lambda_tlpips=0.0)
    values = _train_generator(models, make_batch(b=2, t=1, seed=5), cfg, "distill")
    assert values[-1] < 0.8 * values[0], values


def test_reconstruction_term_pulls_the_student_to_the_ground_truth(dtype=torch.bfloat16):
    """lambda_rec (not in the paper): the student's x0 error to the ground-truth latent falls
    when it trains on L_rec alone, and the term is 0 (absent) at the paper's default. In bf16 (the
    GPU path; fp32 steps are tested above)."""
    models = make_models()
    models.upscaler.to(dtype=dtype)
    batch = make_batch(b=2, t=1, seed=5)
    paper = DistillConfig(lambda_adv=0.0, lambda_tlpips=0.0)
    assert generator_step(models, batch, paper, torch.Generator().manual_seed(0))[1]["rec"] == 0.0
    cfg = DistillConfig(distill_weight=0.0, lambda_adv=0.0, lambda_tlpips=0.0, lambda_rec=1.0)
    values = _train_generator(models, batch, cfg, "rec")
    assert values[-1] < 0.8 * values[0], values


@pytest.mark.parametrize("previous", ["sampled", "student", "gt"])
def test_previous_frame_conditioning_modes(previous, monkeypatch):
    """Frame t is conditioned on frame t-1 as configured; frame 0 on "no previous frame"."""
    models = make_models()
    up = models.upscaler
    batch = make_batch(b=1, t=3, seed=6)
    seen, samples = [], []
    real_temporal_input, real_sample = up.temporal_input, up.sample_few_step

    def spy_temporal_input(lq, state):
        seen.append(None if state is None else state.hr.clone())
        return real_temporal_input(lq, state)

    def spy_sample(*args, **kwargs):
        out = real_sample(*args, **kwargs)
        samples.append(up.decode(out))
        return out

    monkeypatch.setattr(up, "temporal_input", spy_temporal_input)
    monkeypatch.setattr(up, "sample_few_step", spy_sample)
    cfg = DistillConfig(previous_frame=previous, lambda_tlpips=0.0, lambda_adv=0.0)
    generator_step(models, batch, cfg, torch.Generator().manual_seed(0))
    assert seen[0] is None and len(seen) == 3
    if previous == "gt":
        assert all(torch.equal(seen[i], batch["hq"][:, i - 1]) for i in (1, 2)) and not samples
    elif previous == "sampled":
        assert len(samples) == 2 and all(torch.equal(seen[i], samples[i - 1]) for i in (1, 2))
    else:
        assert not samples and not torch.equal(seen[1], batch["hq"][:, 0])


def test_unrolled_student_input_trains_what_inference_restores():
    """student_input="unrolled": the rollout's x0 is the few-step sampler's output for the same
    noise (no train/inference gap), and L_rec on it falls when the student trains through the
    whole sampler, in fp32 and in bf16 (the GPU path)."""
    from pipelines.train.distill_step import _randint, student_rollout

    models = make_models()
    up = models.upscaler
    batch = make_batch(b=2, t=1, seed=7)
    cfg = DistillConfig(student_input="unrolled", distill_weight=0.0, lambda_adv=0.0, lambda_tlpips=0.0,
                        lambda_rec=1.0)
    roll = student_rollout(models, batch["lq"], batch["hq"], cfg, torch.Generator().manual_seed(0), grad=False,
                           decode=False)
    g = torch.Generator().manual_seed(0)
    _randint(0, len(up.cfg.student_timesteps), 2, g, up.device)          # the rollout's draw of s comes first
    lq0 = batch["lq"][:, 0]
    cond = up.lowres_condition(lq0, g)
    assert torch.equal(roll.x0[:, 0], up.sample_few_step(cond, up.temporal_input(lq0, None), g))
    for dtype in (torch.float32, torch.bfloat16):
        models = make_models()
        models.upscaler.to(dtype=dtype)
        values = _train_generator(models, batch, cfg, "rec")
        assert values[-1] < 0.8 * values[0], (dtype, values)

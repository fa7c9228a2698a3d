"""Prior training (no Ray): the tiny VAE and UNet learn, the export loads and samples."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pipelines.train import common as tc
from pipelines.train import prior as tp
from pipelines.train import prior_data as pdata


CFG = tp.resolve(tp.PriorTrainConfig(init="tiny", steps=40, vae_steps=20, batch_size=4, patch=32, vae_crop=32,
                                     degrade="clean", vae_lr=2e-3, lr=1e-3, warmup=0.0, seed=0))


@pytest.fixture(scope="module")
def source():
    frames = pdata.load_sample_frames(["carphone"], "train")
    return pdata.SampleFramePairs(frames, CFG.patch, CFG.degrade, seed=0)


def fixed_unet_loss(bundle, parts, lq, hq) -> float:
    """The diffusion loss on one batch with the same t, noise levels and noise every call."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        latents = tp.encode_latents(bundle.vae, hq, parts.scaling)
        return float(tp.diffusion_objective(bundle.unet, latents, lq, parts.scheduler, parts.low_res_scheduler,
                                            parts.prompt_embeds, CFG.max_noise_level)[0])


def fixed_vae_l1(bundle, hq) -> float:
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        return tp.vae_objective(bundle.vae, hq, CFG)[1]["vae_l1"]


@pytest.fixture(scope="module")
def trained(source):
    """VAE stage, scaling-factor fit, UNet stage (+ decoder), as the job runs them."""
    torch.manual_seed(0)
    bundle = tp.build_prior("tiny", seed=0)
    engines = tp.plain_engines(bundle, CFG)
    parts = tp.PriorParts(bundle.scheduler, bundle.low_res_scheduler, bundle.prompt_embeds,
                          float(bundle.vae.config.scaling_factor))
    data = [source.batch(CFG.batch_size) for _ in range(6)]
    log = {"vae_before": fixed_vae_l1(bundle, data[0][1]), "unet_before": None, "unet_after": None}
    for step in range(CFG.steps):
        if step == CFG.vae_steps:
            log["vae_after"] = fixed_vae_l1(bundle, data[0][1])
            parts.scaling = tp.fit_scaling_factor(bundle.vae, [hq for _, hq in data])
            log["unet_before"] = fixed_unet_loss(bundle, parts, *data[0])
        tp.schedule_lrs(engines, step, CFG)
        lq, hq = data[step % len(data)]
        tp.prior_step(engines, parts, lq, hq, tp.stage_of(step, CFG), CFG)
    log["unet_after"] = fixed_unet_loss(bundle, parts, *data[0])
    return bundle, parts, data, log


def test_tiny_prior_losses_fall(trained):
    _, parts, _, log = trained
    assert log["vae_after"] < 0.85 * log["vae_before"], log
    assert 0.1 < parts.scaling < 100 and parts.scaling != pytest.approx(0.08333)
    assert log["unet_after"] < 0.8 * log["unet_before"], log


def test_encoder_is_frozen_in_the_unet_stage(source):
    torch.manual_seed(0)
    bundle = tp.build_prior("tiny", seed=0)
    engines = tp.plain_engines(bundle, CFG)
    parts = tp.PriorParts(bundle.scheduler, bundle.low_res_scheduler, bundle.prompt_embeds, 1.0)
    before = {k: v.clone() for k, v in bundle.vae.state_dict().items()}
    lq, hq = source.batch(2)
    tp.schedule_lrs(engines, CFG.vae_steps, CFG)
    tp.prior_step(engines, parts, lq, hq, "unet", CFG)
    after = bundle.vae.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed), sorted(changed)[:5]


def test_export_loads_with_from_pretrained_and_samples(trained, tmp_path):
    from models.upscaler.bundle import UpscalerBundle
    from models.upscaler.config import UpscalerConfig
    from models.upscaler.video import VideoUpscaler

    bundle, parts, data, _ = trained
    out = tp.export_prior(bundle, bundle.unet.state_dict(), bundle.vae.state_dict(), parts.scaling, tmp_path / "p")
    loaded = UpscalerBundle.from_pretrained(out)
    assert loaded.vae.config.scaling_factor == pytest.approx(parts.scaling)
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    for k, v in bundle.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[k], v), k
    up = VideoUpscaler(loaded, UpscalerConfig(pretrained=str(out)))
    lq = data[0][0][:2]                                            # (2, 3, 8, 8)
    hr, _ = up.restore_frame(lq, sampler="teacher", steps=4, seed=0)
    assert hr.shape == (2, 3, 32, 32) and torch.isfinite(hr).all()
    assert 0 <= float(hr.min()) and float(hr.max()) <= 1 and float(hr.std()) > 1e-3
    student, _ = up.restore_frame(lq, sampler="student", seed=0)
    assert student.shape == hr.shape and torch.isfinite(student).all()


def test_resolve_defaults_and_errors():
    assert tp.resolve(tp.PriorTrainConfig(init="tiny", steps=100)).vae_steps == 25
    assert tp.resolve(tp.PriorTrainConfig(init="tiny")).joint_decoder == 1
    sd = tp.resolve(tp.PriorTrainConfig(init="sd-x4", steps=100))
    assert sd.vae_steps == 0 and sd.joint_decoder == 0
    with pytest.raises(ValueError, match="patch"):
        tp.resolve(tp.PriorTrainConfig(patch=40))
    with pytest.raises(ValueError, match="vae_steps"):
        tp.resolve(tp.PriorTrainConfig(steps=10, vae_steps=10))
    with pytest.raises(ValueError, match="max_noise_level"):
        tp.resolve(tp.PriorTrainConfig(max_noise_level=0))
    with pytest.raises(ValueError, match="stage"):
        tp.prior_step({}, None, None, None, "both", CFG)
    assert tc.lr_multiplier(0.0, 0.0, 0.1) == pytest.approx(1.0)
    assert tc.lr_multiplier(1.0, 0.0, 0.1) == pytest.approx(0.1)
    assert tc.lr_multiplier(0.005, 0.02, 0.1) < 0.5


def test_sample_pairs_are_aligned_and_held_out_frames_are_not_trained_on():
    train = pdata.load_sample_frames(["carphone"], "train")[0]
    held = pdata.load_sample_frames(["carphone"], "heldout")[0]
    assert len(train) + len(held) == 120 and len(held) == 24
    src = pdata.SampleFramePairs([train], 32, "clean", seed=1)
    lq, hq = src.batch(3)
    assert lq.shape == (3, 3, 8, 8) and hq.shape == (3, 3, 32, 32)
    # "clean" is the 4x4 box average: the pair is pixel-aligned
    torch.testing.assert_close(lq, torch.nn.functional.avg_pool2d(hq, 4), atol=1 / 255, rtol=0)
    assert dataclasses.asdict(CFG)["patch"] == 32

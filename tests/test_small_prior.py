"""The `small` prior: lossless pixel codec, hub-layout round trip, learning, bf16 steps."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from models.pixel_codec import PixelUnshuffleCodec, downscale_factor, latent_channels, load_codec
from models.presets import build_random_bundle
from models.upscaler.bundle import UpscalerBundle
from models.upscaler.config import UpscalerConfig
from models.upscaler.video import VideoUpscaler
from pipelines.train import common as tc
from pipelines.train import prior as tp
from pipelines.train import prior_data as pdata


def test_codec_is_lossless_and_shaped_like_the_x4_latent():
    codec = PixelUnshuffleCodec()
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    z = codec.encode(x).latent_dist.mode()
    assert z.shape == (2, 48, 16, 12)                                 # 3 * 4 * 4 channels at 1/4 size
    assert torch.equal(codec.decode(z).sample, x)                      # bit-exact inverse
    assert torch.equal(codec.decode(z, return_dict=False)[0], x)
    # channel 0 of the latent is the top-left pixel of each 4x4 block of the red plane
    assert torch.equal(z[:, 0], x[:, 0, 0::4, 0::4])
    with pytest.raises(ValueError, match="multiple"):
        codec.encode(torch.zeros(1, 3, 30, 32))
    assert downscale_factor(codec) == 4 and latent_channels(codec) == 48


def test_small_bundle_round_trips_through_the_hub_layout(tmp_path):
    bundle = build_random_bundle("small", seed=3)
    bundle.save_pretrained(tmp_path / "prior")
    assert (tmp_path / "prior" / "vae" / "config.json").read_text().count("PixelUnshuffleCodec") == 1
    assert isinstance(load_codec(str(tmp_path / "prior")), PixelUnshuffleCodec)
    back = UpscalerBundle.from_pretrained(tmp_path / "prior")
    assert isinstance(back.vae, PixelUnshuffleCodec)
    for a, b in zip(bundle.unet.state_dict().values(), back.unet.state_dict().values()):
        assert torch.equal(a, b)
    up = VideoUpscaler(back, UpscalerConfig(pretrained=str(tmp_path / "prior")))
    assert up.scale == 4 and up.extra_channels == 48 + 1      # warped frame unshuffled + "no previous" flag
    lq = torch.rand(3, 12, 16)
    hr, state = up.restore_frame(lq, seed=0)
    assert hr.shape == (3, 48, 64) and 0 <= float(hr.min()) and float(hr.max()) <= 1
    hr2, _ = up.restore_frame(lq, state, seed=0)
    assert hr2.shape == hr.shape
    # the latent is the frame minus the bicubic x4 of its low-res input, and decodes back exactly
    frame = torch.rand(1, 3, 32, 32)
    small = torch.nn.functional.interpolate(frame, scale_factor=0.25, mode="area")
    z = up.encode(frame, small)
    bicubic = torch.nn.functional.interpolate(small, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    assert torch.allclose(up.decode(torch.zeros_like(z), lq=small), bicubic, atol=1e-6)   # zero latent = bicubic
    assert torch.allclose(up.decode(z, lq=small), frame, atol=1e-6)
    with pytest.raises(ValueError, match="pass lq"):
        up.encode(frame)


def test_student_starts_as_the_small_prior():
    up = VideoUpscaler(build_random_bundle("small", seed=1), UpscalerConfig(pretrained="small"))
    lq = torch.rand(2, 3, 8, 8)
    cond = up.lowres_condition(lq, torch.Generator().manual_seed(0))
    x = torch.randn(2, 48, 8, 8)
    temporal = up.temporal_input(lq, None)
    with torch.no_grad():
        assert torch.equal(up.unet_output("student", x, 500, cond, temporal), up.unet_output("teacher", x, 500, cond))


@pytest.fixture(scope="module")
def frames():
    return pdata.load_sample_frames(["carphone"], "train")


def _cfg(**kw):
    return tp.resolve(tp.PriorTrainConfig(init="small", steps=10, batch_size=4, patch=32, degrade="clean",
                                          lr=1e-3, warmup=0.0, max_noise_level=50, seed=0, **kw))


def test_small_prior_learns_on_small_data(frames):
    """60 steps on 2 fixed batches: the x0 loss (same t and noise) falls by a quarter. (The
    UNet starts at x0 = 0, i.e. bicubic: the loss before is bicubic's error.)"""
    cfg = _cfg()
    assert cfg.vae_steps == 0 and cfg.joint_decoder == 0            # nothing to learn in a lossless codec
    torch.manual_seed(0)
    bundle = tp.build_prior("small", seed=0)
    engines = tp.plain_engines(bundle, cfg)
    assert set(engines) == {"unet"}
    parts = tp.PriorParts(bundle.scheduler, bundle.low_res_scheduler, bundle.prompt_embeds, 1.0, vae=bundle.vae)
    source = pdata.SampleFramePairs(frames, cfg.patch, cfg.degrade, seed=0)
    data = [source.batch(cfg.batch_size) for _ in range(2)]

    def fixed_loss():
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            z = tp.encode_latents(bundle.vae, data[0][1], 1.0, data[0][0])
            return float(tp.diffusion_objective(bundle.unet, z, data[0][0], parts.scheduler, parts.low_res_scheduler,
                                                parts.prompt_embeds, cfg.max_noise_level)[0])

    before = fixed_loss()
    for step in range(60):
        tp.prior_step(engines, parts, *data[step % 2], "unet", cfg)
    after = fixed_loss()
    assert after < 0.75 * before, (before, after)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_small_prior_step_runs_in_bf16(frames, dtype):
    """The UNet in bf16 (as DeepSpeed casts it on a GPU), targets and latents in fp32."""
    cfg = _cfg()
    bundle = tp.build_prior("small", seed=0)
    bundle.unet.to(dtype)
    engines = tp.plain_engines(bundle, cfg)
    parts = tp.PriorParts(bundle.scheduler, bundle.low_res_scheduler, bundle.prompt_embeds, 1.0, vae=bundle.vae)
    lq, hq = pdata.SampleFramePairs(frames, cfg.patch, cfg.degrade, seed=0).batch(2)
    before = [p.detach().clone() for p in bundle.unet.parameters()]
    metrics = tp.prior_step(engines, parts, lq, hq, "unet", cfg)
    assert torch.isfinite(torch.tensor(metrics["unet_loss"]))
    assert any(not torch.equal(a, p) for a, p in zip(before, bundle.unet.parameters()))   # conv_out at least
    assert all(p.dtype == dtype for p in bundle.unet.parameters())


def test_export_keeps_the_codec(tmp_path, frames):
    bundle = tp.build_prior("small", seed=0)
    out = tp.export_prior(bundle, bundle.unet.state_dict(), bundle.vae.state_dict(), 1.0, str(tmp_path / "p"))
    back = UpscalerBundle.from_pretrained(out)
    assert isinstance(back.vae, PixelUnshuffleCodec) and back.vae.config.scaling_factor == 1.0


def _small_distill_models(dtype=torch.float32):
    from models.discriminator import LatentDiscriminator
    from models.flow import build, flow_preset
    from models.losses import TemporalLPIPS
    from models.presets import discriminator_preset
    from pipelines.train.distill_step import DistillModels

    torch.manual_seed(0)
    bundle = build_random_bundle("small", seed=0)
    torch.nn.init.normal_(bundle.unet.conv_out.weight, std=0.02)    # as if trained: not the zero start
    up = VideoUpscaler(bundle, UpscalerConfig(pretrained="small"),
                       build(flow_preset("tiny", variant="drfa")), dtype=dtype)
    disc = LatentDiscriminator(up.teacher, discriminator_preset("small")).to(dtype)
    return DistillModels(up, disc, TemporalLPIPS(backbone="random"))


def _clip_batch(frames, b=1, t=2, patch=32):
    hq = frames[0][:t, :, :patch, :patch].float().div(255)[None].repeat(b, 1, 1, 1, 1)
    lq = torch.nn.functional.interpolate(hq.flatten(0, 1), scale_factor=0.25, mode="bicubic",
                                         antialias=True).clamp(0, 1).unflatten(0, (b, t))
    return {"lq": lq, "hq": hq}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_small_distill_step_trains_student_and_discriminator(frames, dtype):
    """One alternating step of Eq. 6 on the small prior, fp32 and bf16 (the GPU path)."""
    from pipelines.train.distill import distill_step
    from pipelines.train.distill_step import DistillConfig

    models = _small_distill_models(dtype)
    up = models.upscaler
    g = tc.PlainEngine(up.student, torch.optim.Adam(up.trainable_parameters(), lr=1e-3), grad_clip=0.0)
    d = tc.PlainEngine(models.discriminator, torch.optim.Adam(models.discriminator.parameters(), lr=1e-3),
                       grad_clip=0.0)
    s0 = [p.detach().clone() for p in up.student.parameters()]
    d0 = [p.detach().clone() for p in models.discriminator.parameters()]
    metrics = distill_step(models, g, d, _clip_batch(frames), DistillConfig(), torch.Generator().manual_seed(0))
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert metrics["distill"] > 0 and metrics["tlpips"] > 0 and "d_loss" in metrics
    assert any(not torch.equal(a, p) for a, p in zip(s0, up.student.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(d0, models.discriminator.parameters()))


def test_train_timesteps_restrict_the_student_draws(frames):
    from pipelines.train.distill_step import DistillConfig, student_rollout

    models = _small_distill_models()
    batch = _clip_batch(frames, b=8, t=1)
    cfg = DistillConfig(train_timesteps=(750, 500, 250))
    roll = student_rollout(models, batch["lq"], batch["hq"], cfg, torch.Generator().manual_seed(0), grad=False,
                           decode=False)
    assert set(roll.timesteps.tolist()) <= {750, 500, 250}
    roll_all = student_rollout(models, batch["lq"], batch["hq"], DistillConfig(),
                               torch.Generator().manual_seed(3), grad=False, decode=False)
    assert set(roll_all.timesteps.tolist()) <= {750, 500, 250, 0}
    with pytest.raises(ValueError, match="not student timesteps"):
        student_rollout(models, batch["lq"], batch["hq"], DistillConfig(train_timesteps=(600,)), None,
                        grad=False, decode=False)


def test_student_gradient_checkpointing_gives_the_same_gradients(frames):
    """`--gradient-checkpointing`: the same student gradients (recomputed, not stored), and the
    discriminator still gets none in the generator step."""
    from pipelines.train.distill_step import DistillConfig, generator_step

    grads = []
    for checkpointing in (False, True):
        models = _small_distill_models()
        models.upscaler.train()
        if checkpointing:
            models.upscaler.student.enable_gradient_checkpointing()
        loss, _ = generator_step(models, _clip_batch(frames), DistillConfig(), torch.Generator().manual_seed(0))
        loss.backward()
        assert all(p.grad is None for p in models.discriminator.parameters())
        grads.append([p.grad.clone() for p in models.upscaler.student.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(*grads))
    assert sum(float(g.abs().sum()) for g in grads[0]) > 0


def test_discriminator_heads_only_keeps_the_encoder(frames):
    """`--no-d-train-encoder` (LADD-style): D's step moves its heads, never its encoder."""
    from models.discriminator import LatentDiscriminator
    from models.presets import discriminator_preset
    from pipelines.train.distill import distill_step
    from pipelines.train.distill_step import DistillConfig

    models = _small_distill_models()
    up = models.upscaler
    models.discriminator = LatentDiscriminator(up.teacher, discriminator_preset("small", train_encoder=False))
    d = models.discriminator
    trainable = d.trainable_parameters()
    assert trainable and all(any(p is q for q in d.heads.parameters()) for p in trainable)
    enc0 = [p.detach().clone() for p in d.encoder.parameters()]
    heads0 = [p.detach().clone() for p in d.heads.parameters()]
    g = tc.PlainEngine(up.student, torch.optim.Adam(up.trainable_parameters(), lr=1e-3), grad_clip=0.0)
    de = tc.PlainEngine(d, torch.optim.Adam(trainable, lr=1e-3), grad_clip=0.0)
    distill_step(models, g, de, _clip_batch(frames), DistillConfig(), torch.Generator().manual_seed(0))
    assert all(torch.equal(a, p) for a, p in zip(enc0, d.encoder.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(heads0, d.heads.parameters()))


def test_shipped_prior_loads_and_restores():
    """assets/small-prior (the demo's starting point): hub layout, fp16-stored weights <= 4 MiB
    loaded as float32, a model card naming the command that trained it, and it restores."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "assets" / "small-prior"
    weights = root / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 4 * 1024 * 1024
    card = (root / "MODEL_CARD.md").read_text()
    assert "benchmarks/prior_quality.py" in card and "float16" in card
    bundle = UpscalerBundle.from_pretrained(root)
    assert isinstance(bundle.vae, PixelUnshuffleCodec) and bundle.vae.config.residual
    assert next(bundle.unet.parameters()).dtype == torch.float32
    up = VideoUpscaler(bundle, UpscalerConfig(pretrained=str(root)))
    lq = pdata.load_sample_frames(["carphone"], "heldout")[0][:1, :, :64, :64].float().div(255)
    small = torch.nn.functional.interpolate(lq, scale_factor=0.25, mode="area")
    hr, _ = up.restore_frame(small, seed=0)
    assert hr.shape == (1, 3, 64, 64) and torch.isfinite(hr).all()


def test_shipped_student_starts_a_distillation_and_restores():
    """assets/small-student (where the demo's distillation starts): fp16-stored student <= 4 MiB,
    a model card naming the command that trained it, and a distillation from the shipped prior
    that starts from it restores a real held-out frame."""
    from pathlib import Path

    from pipelines.train.distill import DistillTrainConfig, build_models

    root = Path(__file__).resolve().parents[1] / "assets"
    weights = root / "small-student" / "student" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 4 * 1024 * 1024 and _all_fp16(weights)
    card = (root / "small-student" / "MODEL_CARD.md").read_text()
    assert "jobs/distill.py" in card and "--student-input unrolled" in card and "float16" in card
    cfg = DistillTrainConfig(upscaler=UpscalerConfig(pretrained=str(root / "small-prior")), flow="none",
                             tlpips_backbone="random", student_init=str(root / "small-student"))
    up = build_models(cfg)[0].upscaler.eval()
    assert next(up.student.parameters()).dtype == torch.float32
    lq = pdata.load_sample_frames(["carphone"], "heldout")[0][:2, :, :64, :64].float().div(255)
    small = torch.nn.functional.interpolate(lq, scale_factor=0.25, mode="area")
    with torch.no_grad():
        hr = up.restore_clip(small)
    assert hr.shape == (2, 3, 64, 64) and torch.isfinite(hr).all()


def _ship_tool():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "ship_model.py"
    spec = importlib.util.spec_from_file_location("ship_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _all_fp16(path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())


def test_ship_model_stores_a_prior_in_fp16_and_reloads_fp32(tmp_path):
    src = tmp_path / "prior"
    build_random_bundle("small", seed=0).save_pretrained(src)
    assert _ship_tool().main(["prior", str(src), str(tmp_path / "shipped"), "--command", "echo trained"]) == 0
    assert _all_fp16(tmp_path / "shipped" / "unet" / "diffusion_pytorch_model.safetensors")
    card = (tmp_path / "shipped" / "MODEL_CARD.md").read_text()
    assert "`echo trained`" in card and "small x4 prior" in card
    back = UpscalerBundle.from_pretrained(tmp_path / "shipped")
    assert next(back.unet.parameters()).dtype == torch.float32


def test_ship_model_stores_a_student_that_distillation_starts_from(tmp_path):
    """A model folder's student/ in fp16 + restorer.json: the rounding it measures is small and
    nonzero, and jobs/distill.py's --student-init loads it back into float32."""
    from pipelines import model_folder
    from pipelines.train.distill import DistillTrainConfig, build_models

    prior = tmp_path / "prior"
    build_random_bundle("small", seed=0).save_pretrained(prior)
    cfg = DistillTrainConfig(upscaler=UpscalerConfig(pretrained=str(prior)), flow="none", tlpips_backbone="random")
    models, bundle = build_models(cfg)
    with torch.no_grad():
        for p in models.upscaler.student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    src = model_folder.save(tmp_path / "model", models, cfg, step=1, complete=True, bundle=bundle)
    shipped = tmp_path / "small-student"
    info = _ship_tool().ship("student", src, shipped, command="echo distilled")
    assert sorted(p.name for p in shipped.iterdir()) == ["MODEL_CARD.md", "restorer.json", "student"]
    assert _all_fp16(shipped / "student" / "diffusion_pytorch_model.safetensors")
    assert 0 < info["error"] < 1e-2
    assert "4-step temporal student" in (shipped / "MODEL_CARD.md").read_text()
    started = build_models(dataclasses.replace(cfg, student_init=str(shipped)))[0].upscaler.student.state_dict()
    for k, v in models.upscaler.student.state_dict().items():
        assert started[k].dtype == torch.float32 and torch.equal(started[k], v.half().float()), k

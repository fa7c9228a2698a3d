"""The distillation job on tiny models and tiny shards (CPU): the exported folder restores
exactly what the trained model restores; a 2-worker Ray Train + DeepSpeed ZeRO-2 run, killed
once, resumes, finishes, keeps teacher / DRFA / VAE bit-identical, moves student and D, and
exports a model that the restore job loads; a restart with more steps trains on."""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import uuid

import pytest
import torch
from safetensors.torch import load_file

from models.flow import build, flow_preset
from models.flow import save as save_flow
from models.presets import save_tiny_pretrained
from pipelines import model_folder
from pipelines.common import cli
from pipelines.data.loaders import LoaderConfig, make_distill_loader
from pipelines.data.shards import ShardConfig, build_shards
from pipelines.train.distill import (DistillTrainConfig, build_models, check_config, distill, distill_step,
                                     plain_engines, step_generator)
from pipelines.train.distill_step import discriminator_step, generator_step
from tests.media import shots_video

HQ = 32           # HQ crop (px): LQ 8x8, latents 8x8; the tiny DRFA sees the LQ at 32 px (x4)
CLIP = 2          # frames per training clip


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A saved tiny prior, a saved tiny DRFA (random weights) and tiny clip shards."""
    root = tmp_path_factory.mktemp("distill_assets")
    teacher = save_tiny_pretrained(root / "teacher", seed=0)
    torch.manual_seed(0)
    flow = save_flow(build(flow_preset("tiny", "drfa")), root / "drfa" / "drfa.safetensors")
    (root / "videos").mkdir()
    shots_video(str(root / "videos" / "pan.mp4"), cuts=[], n=24, height=40, width=48)
    shards = str(root / "shards")
    build_shards(ShardConfig(src=str(root / "videos"), dst=shards, clip_len=4, stride=4, size=HQ,
                             shard_mb=0.02, use_ray=False, progress=False))
    return {"teacher": str(teacher), "flow": str(flow), "shards": shards}


def small_config(assets, tmp_path, **kw) -> DistillTrainConfig:
    base = dict(shards=assets["shards"], teacher=assets["teacher"], flow=assets["flow"], out=str(tmp_path / "model"),
                storage_path=str(tmp_path / "ray"), run_name=f"distill-{uuid.uuid4().hex[:8]}",
                num_workers=1, batch_size=1, steps=2, crop=HQ, clip_len=CLIP, loader_workers=0,
                tlpips_backbone="random", degrade="clean", lr=1e-4, d_lr=1e-4, checkpoint_every=2, report_every=1)
    base.update(kw)
    return cli.build(DistillTrainConfig, **base)


def tensors(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k, v in a.items():
        assert torch.equal(v, b[k]), f"{what}: {k} differs"


def assert_moved(before: dict, after: dict, what: str) -> None:
    assert before.keys() == after.keys(), what
    assert any(not torch.equal(before[k].float(), after[k].float()) for k in before), f"{what} did not move"


def frozen_checks(folder, assets) -> None:
    """Teacher UNet, VAE and DRFA of an export are bit-identical to the job's inputs."""
    for part in ("unet", "vae"):
        assert_same_tensors(tensors(os.path.join(folder, part, "diffusion_pytorch_model.safetensors")),
                            tensors(os.path.join(assets["teacher"], part, "diffusion_pytorch_model.safetensors")),
                            part)
    assert_same_tensors(tensors(os.path.join(folder, "flow.safetensors")), tensors(assets["flow"]), "DRFA")


def lq_clip(assets) -> torch.Tensor:
    loader = make_distill_loader(assets["shards"], LoaderConfig(batch_size=1, num_workers=0, crop=HQ, clip_len=3,
                                                                shuffle=False, degrade="clean"), rank=0, world_size=1)
    return next(iter(loader))["lq"][0]                              # (3, 3, 8, 8)


def test_export_restores_exactly_what_the_trained_model_restores(assets, tmp_path):
    cfg = small_config(assets, tmp_path)
    check_config(cfg)
    models, bundle = build_models(cfg)
    up, d = models.upscaler, models.discriminator
    student0 = {k: v.clone() for k, v in up.student.state_dict().items()}
    d0 = {k: v.clone() for k, v in d.state_dict().items()}
    g_engine, d_engine = plain_engines(models, cfg.lr, cfg.d_lr)
    loader = make_distill_loader(cfg.shards, LoaderConfig(batch_size=1, num_workers=0, crop=HQ, clip_len=CLIP,
                                                                  degrade=cfg.degrade),
                                 rank=0, world_size=1)
    up.train()
    for step, batch in zip(range(2), loader):
        metrics = distill_step(models, g_engine, d_engine, batch, cfg.loss,
                               torch.Generator().manual_seed(step))
        assert {"loss", "distill", "adv_g", "tlpips", "d_loss"} <= set(metrics)
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    folder = model_folder.save(tmp_path / "export", models, cfg, step=2, complete=True, bundle=bundle)
    frozen_checks(folder, assets)
    assert_moved(student0, tensors(folder / "student" / "diffusion_pytorch_model.safetensors"), "student")
    assert_moved(d0, tensors(folder / "discriminator.safetensors"), "discriminator")

    up.eval()
    loaded = model_folder.load(folder, "cpu")
    assert loaded.cfg.student_timesteps == (750, 500, 250, 0)
    clip = lq_clip(assets)
    want = up.restore_clip(clip, seed=5)
    got = loaded.restore_clip(clip, seed=5)
    assert got.shape == (3, 3, HQ, HQ)
    assert torch.equal(got, want)                                     # from_pretrained reproduces it exactly
    # the restore job's loader reads the same folder to the same model
    from pipelines.restore.config import RestoreConfig
    from pipelines.restore.restorers import draw_noise
    from pipelines.restore.restorers import load_restorer as restore_job_loader

    job = restore_job_loader(RestoreConfig(model=str(folder), tile=0), "cpu")
    noise = draw_noise(job, 1, 8, 8, torch.Generator().manual_seed(7))
    hr, _ = job.restore_frame(clip[:1], None, noise)
    ref, _ = loaded.restore_frame(clip[0], None, generator=torch.Generator().manual_seed(7))
    assert torch.equal(hr[0], ref)


def test_student_init_starts_from_a_trained_student_in_fp16_or_fp32(assets, tmp_path):
    """--student-init: the student begins as the given export's (a full model folder, or its
    student/ alone stored in float16, as the shipped asset is), not as a copy of the prior."""
    from safetensors.torch import save_file

    cfg = small_config(assets, tmp_path)
    models, bundle = build_models(cfg)
    fresh = {k: v.clone() for k, v in models.upscaler.student.state_dict().items()}
    with torch.no_grad():
        for p in models.upscaler.student.parameters():
            p.add_(0.01 * torch.randn_like(p))                      # "a trained student": not the prior's copy
    trained = {k: v.clone() for k, v in models.upscaler.student.state_dict().items()}
    folder = model_folder.save(tmp_path / "export", models, cfg, step=1, complete=True, bundle=bundle)

    started = build_models(small_config(assets, tmp_path, student_init=str(folder)))[0].upscaler.student.state_dict()
    assert_same_tensors(started, trained, "student from --student-init")
    assert any(not torch.equal(started[k], fresh[k]) for k in fresh)

    half = tmp_path / "half" / "student"                             # student/ alone, float16
    half.mkdir(parents=True)
    (half / "config.json").write_text((folder / "student" / "config.json").read_text())
    save_file({k: v.half() for k, v in tensors(folder / "student" / "diffusion_pytorch_model.safetensors").items()},
              str(half / "diffusion_pytorch_model.safetensors"))
    cfg_half = small_config(assets, tmp_path, student_init=str(half.parent))
    check_config(cfg_half)
    got = build_models(cfg_half)[0].upscaler.student.state_dict()
    for k, v in trained.items():
        assert got[k].dtype == torch.float32
        assert torch.equal(got[k], v.half().float()), k


def test_bad_options_fail_early_with_the_flag(assets, tmp_path):
    with pytest.raises(ValueError, match="--batch-size 3"):
        check_config(small_config(assets, tmp_path, batch_size=3, num_workers=2))
    with pytest.raises(ValueError, match="ZeRO-3"):
        check_config(small_config(assets, tmp_path, zero_stage=3))
    with pytest.raises(ValueError, match="--flow"):
        check_config(small_config(assets, tmp_path, flow=str(tmp_path / "missing.safetensors")))
    with pytest.raises(ValueError, match="--teacher"):
        check_config(small_config(assets, tmp_path, teacher=str(tmp_path)))
    with pytest.raises(ValueError, match="--previous-frame"):
        check_config(small_config(assets, tmp_path, previous_frame="future"))
    with pytest.raises(ValueError, match="--student-init .*no student inside"):
        check_config(small_config(assets, tmp_path, student_init=str(tmp_path)))


def emulate_ranks(cfg: DistillTrainConfig, steps: int):
    """What `world` ZeRO-2 ranks compute, in one process with plain Adam: the same models, each
    rank's batches and noise, gradients averaged over the ranks; and the student's weight EMA
    (None without --ema-decay)."""
    from pipelines.train.ema import WeightEMA

    world = cfg.num_workers
    models, _ = build_models(cfg)
    ema = WeightEMA(models.upscaler.student, cfg.ema_decay) if cfg.ema_decay else None
    up, d = models.upscaler, models.discriminator
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    g_opt = torch.optim.Adam(up.trainable_parameters(), lr=cfg.lr, betas=betas)
    d_opt = torch.optim.Adam(d.parameters(), lr=cfg.d_lr, betas=betas)
    lcfg = LoaderConfig(batch_size=cfg.batch_size // world, num_workers=0, seed=cfg.seed, degrade=cfg.degrade,
                        crop=cfg.crop, clip_len=cfg.clip_len)
    data = [iter(make_distill_loader(cfg.shards, lcfg, rank=r, world_size=world, epoch=0)) for r in range(world)]
    dcfg = cfg.loss
    up.train()
    for step in range(steps):
        batches = [next(it) for it in data]
        gens = [step_generator(cfg.seed, r, step) for r in range(world)]
        keeps = [{} for _ in range(world)]
        g_opt.zero_grad()
        for r in range(world):
            (generator_step(models, batches[r], dcfg, gens[r], keep=keeps[r])[0] / world).backward()
        g_opt.step()
        d_opt.zero_grad()
        for r in range(world):
            (discriminator_step(models, batches[r], dcfg, gens[r], fake=keeps[r]["fake"])[0] / world).backward()
        d_opt.step()
        if ema is not None:
            ema.update(models.upscaler.student)
    return models, ema


def assert_matches(trained: dict, emulated: dict, initial: dict, what: str) -> None:
    """`trained` equals `emulated` to float roundoff, far below how far training moved it."""
    moved = max((trained[k].float() - initial[k].float()).abs().max().item() for k in trained)
    error = max((trained[k].float() - emulated[k].float()).abs().max().item() for k in trained)
    assert moved > 0 and error <= 1e-3 * moved, f"{what}: differs from the emulation by {error} (moved {moved})"


@pytest.mark.slow
def test_two_workers_zero2_killed_once_resume_finish_export_restart(ray_local, assets, tmp_path):
    # rank 0 dies after step 3, before its checkpoint: the group restarts from the step-2 checkpoint;
    # the export is the student's weight EMA (decay 0.5: far from the last weights after 3 steps)
    cfg = small_config(assets, tmp_path, num_workers=2, batch_size=2, steps=3, checkpoint_every=2,
                       fail_at_step=3, max_failures=1, zero_stage=2, ema_decay=0.5)
    summary = distill(cfg)
    assert summary["steps"] == 3
    assert summary["resumed_from"] == 2
    assert all(torch.isfinite(torch.tensor(summary[k])) for k in ("loss", "distill", "adv_g", "tlpips", "d_loss"))

    # the checkpoint: both engines' DeepSpeed state with both ranks' ZeRO partitions
    ckpt = summary["checkpoint"]
    for engine in ("student", "discriminator"):
        names = os.listdir(os.path.join(ckpt, engine, "state"))
        assert sum("optim_states" in n for n in names) == 2, names
    assert read_json(os.path.join(ckpt, "trainer_state.json"))["step"] == 3

    # the export: frozen parts bit-identical to the inputs, student and D moved
    out = cfg.out
    frozen_checks(out, assets)
    models, _ = build_models(cfg)                           # what the workers started from (seeded)
    student0 = {k: v.clone() for k, v in models.upscaler.student.state_dict().items()}
    d0 = {k: v.clone() for k, v in models.discriminator.state_dict().items()}

    # the step-2 checkpoint (before the kill) holds what two ranks with averaged gradients compute:
    # both engines' ZeRO-2 updates are right, D's parameters never got the generator's gradients
    step2 = [os.path.dirname(f) for f in glob.glob(os.path.join(cfg.storage_path, cfg.run_name, "checkpoint_*",
                                                                 "trainer_state.json")) if read_json(f)["step"] == 2]
    assert len(step2) == 1
    emulated, ema2 = emulate_ranks(cfg, steps=2)
    assert_matches(tensors(os.path.join(step2[0], "export", "student", "diffusion_pytorch_model.safetensors")),
                   ema2.state_dict(), student0, "student EMA")
    assert_matches(torch.load(os.path.join(step2[0], "student_ema.pt"), weights_only=True),
                   ema2.state_dict(), student0, "checkpointed student EMA")
    assert_matches(tensors(os.path.join(step2[0], "export", "discriminator.safetensors")),
                   emulated.discriminator.state_dict(), d0, "discriminator")
    assert_moved(student0, tensors(os.path.join(out, "student", "diffusion_pytorch_model.safetensors")), "student")
    assert_moved(d0, tensors(os.path.join(out, "discriminator.safetensors")), "discriminator")
    assert_same_tensors(tensors(os.path.join(out, "student", "diffusion_pytorch_model.safetensors")),
                        tensors(os.path.join(ckpt, "export", "student", "diffusion_pytorch_model.safetensors")),
                        "export = last checkpoint")
    meta = read_json(os.path.join(out, "restorer.json"))
    assert meta["complete"] and meta["step"] == 3

    # it restores, through the restore job's loader too, to the same frames
    from pipelines.restore.config import RestoreConfig
    from pipelines.restore.restorers import draw_noise
    from pipelines.restore.restorers import load_restorer as restore_job_loader

    clip = lq_clip(assets)
    loaded = model_folder.load(out)
    job = restore_job_loader(RestoreConfig(model=out, tile=0), "cpu")
    hr, _ = job.restore_frame(clip[:1], None, draw_noise(job, 1, 8, 8, torch.Generator().manual_seed(1)))
    ref, _ = loaded.restore_frame(clip[0], None, generator=torch.Generator().manual_seed(1))
    assert torch.equal(hr[0], ref) and hr.shape == (1, 3, HQ, HQ)

    # a restart with the same run name and more steps resumes from the final checkpoint
    again = distill(dataclasses.replace(cfg, steps=4, fail_at_step=-1))
    assert again["steps"] == 4 and again["resumed_from"] == 3
    assert_moved(tensors(os.path.join(ckpt, "export", "student", "diffusion_pytorch_model.safetensors")),
                 tensors(os.path.join(out, "student", "diffusion_pytorch_model.safetensors")), "student after restart")
    frozen_checks(out, assets)

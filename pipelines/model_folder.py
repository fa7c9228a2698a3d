"""The model folder: the one contract between distillation (which writes it) and restoration
(which reads it). `save(folder, models, cfg, ...)` writes it, `load(path, device)` returns
the `VideoUpscaler` it holds; `jobs/restore.py --model PATH` restores with it.

ONE folder is a complete restorable model (local or s3://):

    unet/ vae/ scheduler/ low_res_scheduler/ prompt_embeds.safetensors
                                   the teacher bundle (`UpscalerBundle.save_pretrained`): the
                                   frozen prior, bit-identical to --teacher, and its VAE
    student/                       the trained temporal student (`VideoUpscaler.save_student`
                                   layout: config.json + diffusion_pytorch_model.safetensors)
    flow.safetensors, flow.json    the frozen DRFA (`models.flow.save`), bit-identical to --flow
    discriminator.safetensors      the trained D (to continue training; not used to restore),
                                   its `DiscriminatorConfig` in the metadata
    restorer.json                  the `UpscalerConfig` the student was trained with (prompt,
                                   noise level, student timesteps, temporal encoding, flow
                                   iterations), the step and the sources (written last)

Intermediate checkpoints' folders hold only student/, discriminator.safetensors and
restorer.json (`complete` false; the frozen parts are written once, at the end).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import nn

from pipelines.common import storage

EXPORT_FORMAT = "d2vr-restorer/1"
RESTORER_JSON = "restorer.json"
FLOW_FILE = "flow.safetensors"
DISCRIMINATOR_FILE = "discriminator.safetensors"
STUDENT_DIR = "student"


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DeepSpeed engine (or the module itself)."""
    inner = module._modules.get("module") if isinstance(module, nn.Module) else None
    return inner if isinstance(inner, nn.Module) and type(module).__name__ == "DeepSpeedEngine" else module


def _cpu_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}


def _frozen_on_cpu_fp32(up) -> bool:
    parts = [p for m in (up.teacher, up.vae) for p in m.parameters()]
    return all(p.device.type == "cpu" and p.dtype == torch.float32 for p in parts)


def save(folder: str | os.PathLike, models, cfg, *, step: int, complete: bool,
                 bundle=None, student_weights: dict | None = None, discriminator_weights: dict | None = None
                 ) -> Path:
    """Write the model folder of a distillation (layout: module docstring): `models` are its
    `DistillModels`, `cfg` its `DistillTrainConfig`. `complete=False` writes only the trained
    parts (student, D, restorer.json). Weights default to the modules' own (fp32, CPU); the
    training loop passes the engines' gathered weights."""
    from safetensors.torch import save_file

    from models.upscaler.bundle import UpscalerBundle

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    up = models.upscaler
    student = _unwrap(up.student)
    disc = _unwrap(models.discriminator)

    # 1. The student, in `save_pretrained` layout (config + safetensors).
    student_dir = out / STUDENT_DIR
    student_dir.mkdir(exist_ok=True)
    student.save_config(str(student_dir))
    save_file(student_weights if student_weights is not None else _cpu_weights(student),
              str(student_dir / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    # 2. The discriminator (to continue training), its config in the metadata.
    save_file(discriminator_weights if discriminator_weights is not None else _cpu_weights(disc),
              str(out / DISCRIMINATOR_FILE),
              metadata={"format": "pt", "discriminator_config": json.dumps(dataclasses.asdict(disc.cfg))})
    # 3. The frozen parts, once: the teacher bundle and the DRFA.
    if complete:
        if _frozen_on_cpu_fp32(up):          # the very modules that trained the student
            from diffusers import DDIMScheduler

            scheduler = bundle.scheduler if bundle is not None else DDIMScheduler.from_config(up.scheduler_config)
            UpscalerBundle(unet=up.teacher, vae=up.vae, scheduler=scheduler, low_res_scheduler=up.low_res_scheduler,
                           prompt_embeds=up.prompt_embeds.detach().float().cpu(), prompt=cfg.upscaler.prompt,
                           negative_prompt_embeds=(up.negative_prompt_embeds.detach().float().cpu()
                                                   if up.guided else None),
                           negative_prompt=cfg.upscaler.negative_prompt
                           ).save_pretrained(out)
        else:                                # bf16 / GPU copies: save the fp32 source instead
            from models.presets import load_bundle

            with storage.local_dir(cfg.teacher) as teacher:
                load_bundle(teacher, prompt=cfg.upscaler.prompt, negative_prompt=cfg.upscaler.negative_prompt,
                            seed=cfg.model_seed).save_pretrained(out)
        if up.flow_net is not None:
            from models.flow import save as save_flow

            save_flow(up.flow_net, out / FLOW_FILE)
    # 4. What the restorer needs to rebuild the upscaler as trained (written last).
    ucfg = dataclasses.asdict(up.cfg)
    ucfg.pop("pretrained")
    info = {"format": EXPORT_FORMAT, "complete": bool(complete), "step": int(step), "upscaler": ucfg,
            "discriminator": dataclasses.asdict(disc.cfg), "teacher": cfg.teacher, "flow": cfg.flow,
            "distill": dataclasses.asdict(cfg.loss)}
    (out / RESTORER_JSON).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return out


def load(path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  vae_dtype: torch.dtype | None = None, **overrides):
    """The `VideoUpscaler` of an export folder (local or s3://), in eval mode, with the
    student, the DRFA and the upscaler settings it was trained with (`restorer.json`;
    `overrides` replace single `UpscalerConfig` fields, e.g. flow_iters at inference).
    Restore with `.restore_clip(lq (T, 3, h, w))` / `.restore_frame(lq, state)`."""
    from models.upscaler.config import UpscalerConfig
    from models.presets import load_upscaler

    with storage.local_dir(str(path)) as local:
        if not os.path.isdir(os.path.join(local, "unet")):
            raise ValueError(f"load: {path} is not a model folder (no unet/ inside)")
        meta_path = os.path.join(local, RESTORER_JSON)
        meta = json.loads(Path(meta_path).read_text()) if os.path.isfile(meta_path) else {}
        fields = dict(meta.get("upscaler", {}))
        fields.update(overrides)
        if "student_timesteps" in fields:
            fields["student_timesteps"] = tuple(fields["student_timesteps"])
        flow_net = None
        if os.path.isfile(os.path.join(local, FLOW_FILE)):
            from models.flow import load as load_flow

            flow_net = load_flow(os.path.join(local, FLOW_FILE))
        student = os.path.join(local, STUDENT_DIR)
        up = load_upscaler(UpscalerConfig(pretrained=local, **fields), flow_net,
                                       student_unet=student if os.path.isdir(student) else None,
                                       device=device, dtype=dtype, vae_dtype=vae_dtype)
    return up.eval()

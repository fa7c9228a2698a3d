"""The video upscaler: Stable Diffusion x4 Upscaler parts, a temporal student, samplers.

The package: `config` (UpscalerConfig), `bundle` (the hub-layout parts and their I/O),
`student` (conv_in surgery), `video` (this module: `VideoUpscaler`).

Pieces (diffusers): a `UNet2DConditionModel` that reads `[latent (4), noised low-res RGB
(3)]` at the low-res size with `class_labels = noise_level` and predicts v; an
`AutoencoderKL` whose latent is 4x smaller than the image (scaling factor 0.08333); the
training noise schedule (a DDIM config, v-prediction) and the `low_res_scheduler` that
noise-augments the low-res input (level 20 by default, as the diffusers pipeline).

`VideoUpscaler` holds
- `teacher`: the single-image prior, frozen (the distillation target);
- `student`: a copy of it whose `conv_in` is widened with zero-initialised weights for the
  temporal channels (`models.temporal`): at step 0 it computes bit for bit what the teacher
  computes, whatever the previous frame (`SplitConvIn`; weights get fresh, equally aligned
  allocations so that CPU GEMMs take the same kernels);
- `vae` and `flow_net` (the DRFA), frozen. The flow is estimated on the low-res frames,
  current -> previous; frames smaller than the flow net accepts (tiny DRFA: 32 px) are
  estimated at an integer multiple of their size and the flow scaled back.

Text conditioning is one fixed prompt embedding (`models.upscaler.bundle`). The teacher applies
classifier-free guidance as `StableDiffusionUpscalePipeline` does (`guidance_scale`, default 9,
against the `negative_prompt` embedding, default ""): with the default prompt "" both
embeddings are the same and guidance is skipped (it would change nothing); with another
prompt every teacher call runs the UNet on [negative, prompt] and mixes the two. The student
is not guided: it learns the guided teacher's outputs (guidance distillation).

Samplers: `sample_few_step` (the student's: predict x0 at each timestep of
`cfg.student_timesteps`, default the paper's (750, 500, 250, 0), and re-noise it with fresh
noise to the next one, ADD-style, starting from pure noise) and `sample_multi_step` (the
teacher's: a diffusers DDIM or DPM-Solver++ loop, 50 steps by default). `restore_frame` /
`restore_clip` run them frame by frame with the explicit `TemporalState`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

from models.pixel_codec import (
    downscale_factor,
    latent_base,
    latent_channels,
    module_dtype,
)
from models.temporal import no_previous, temporal_channels, warp_previous
from models.tiles import TileConfig, tiled_map
from models.timing import SectionTimer
from models.upscaler import sampling
from models.upscaler.bundle import UpscalerBundle
from models.upscaler.config import SOLVERS, VAE_TILE_OVERLAP, UpscalerConfig
from models.upscaler.student import make_student, split_conv_in

# --------------------------------------------------------------------------- helpers


class LowResCondition(NamedTuple):
    image: torch.Tensor          # (B, 3, h, w) noise-augmented low-res frame in [-1, 1] (+noise)
    noise_level: torch.Tensor    # (B,) long, the UNet's class label


@dataclasses.dataclass(frozen=True)
class TemporalState:
    """What the next frame needs from this one. `None` in its place = first frame of a shot."""

    lq: torch.Tensor             # (B, 3, h, w) previous low-res frame, [0, 1]
    hr: torch.Tensor             # (B, 3, s*h, s*w) previous restored frame, [0, 1]


def _move(module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """`.to(device)`, and `.to(dtype)` only when it changes something (diffusers warns on any dtype cast)."""
    module.to(device)
    if any(p.dtype != dtype for p in module.parameters() if p.is_floating_point()):
        module.to(dtype)


def _own_storage(module: nn.Module) -> None:
    """Give every parameter/buffer its own fresh allocation (in place).

    Weights loaded from safetensors can be views at arbitrary offsets of one buffer; CPU
    GEMMs pick kernels by alignment, so the prior and its deep-copied student would then
    differ in the last bit. Fresh allocations are aligned alike (and no longer pin the file).
    """
    with torch.no_grad():
        for p in module.parameters():
            p.data = p.data.clone()
        for b in module.buffers():
            b.data = b.data.clone()


def _freeze(module: nn.Module | None) -> None:
    if module is not None:
        module.requires_grad_(False)
        module.eval()


# --------------------------------------------------------------------------- the upscaler


class VideoUpscaler(nn.Module):
    """Single-image x4 diffusion prior + temporally conditioned few-step student.

    device / dtype: where and in what precision the UNets run; `vae_dtype` (default: float32)
    is the VAE's, separately, since the x4 VAE overflows in fp16. The flow net always runs
    in float32. `student_unet` loads a trained student (else one is made from the prior).
    """

    def __init__(self, bundle: UpscalerBundle, cfg: UpscalerConfig = UpscalerConfig(),
                 flow_net: nn.Module | None = None, *, student_unet: UNet2DConditionModel | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 vae_dtype: torch.dtype | None = None):
        super().__init__()
        self.cfg = cfg
        self.scale = downscale_factor(bundle.vae)                            # 4 for the x4 VAE
        self.extra_channels = temporal_channels(cfg.temporal_encoding, self.scale)
        prior_in = bundle.unet.config.in_channels
        latent_ch = latent_channels(bundle.vae)
        if prior_in != latent_ch + 3:
            raise ValueError(f"prior UNet in_channels {prior_in} != latent {latent_ch} + 3 low-res channels")
        self.latent_channels = latent_ch
        self.teacher = bundle.unet
        self.vae = bundle.vae
        self.flow_net = flow_net
        for m in (self.teacher, self.vae, self.flow_net):
            _freeze(m)
        _own_storage(self.teacher)
        _own_storage(self.vae)
        if student_unet is None:
            student_unet = make_student(bundle.unet, self.extra_channels)
        elif student_unet.config.in_channels != prior_in + self.extra_channels:
            raise ValueError(f"student_unet in_channels {student_unet.config.in_channels} != "
                             f"{prior_in} + {self.extra_channels} temporal channels ({cfg.temporal_encoding})")
        else:
            _own_storage(student_unet)
        self.student = split_conv_in(student_unet, prior_in)
        self.scheduler_config = dict(bundle.scheduler.config)
        self.prediction_type = bundle.scheduler.config.prediction_type
        if self.prediction_type not in ("v_prediction", "epsilon", "sample"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        self.low_res_scheduler = bundle.low_res_scheduler
        self.alphas_cumprod = bundle.scheduler.alphas_cumprod.detach().float().clone()  # (1000,)
        self.register_buffer("prompt_embeds", bundle.prompt_embeds.detach().clone(), persistent=False)
        neg = bundle.negative_prompt_embeds
        # guidance only where it changes something: a scale above 1 and a different baseline
        self.guided = (cfg.guidance_scale > 1 and neg is not None and not torch.equal(neg, bundle.prompt_embeds))
        self.register_buffer("negative_prompt_embeds", (neg if self.guided else bundle.prompt_embeds).detach().clone(),
                             persistent=False)
        self.scaling_factor = float(bundle.vae.config.scaling_factor)
        self.timer: SectionTimer | None = None
        device = torch.device(device)
        for module, want in ((self.student, dtype), (self.teacher, dtype), (self.vae, vae_dtype or torch.float32),
                             (self.flow_net, torch.float32)):
            if module is not None:
                _move(module, device, want)
        self.prompt_embeds = self.prompt_embeds.to(device, dtype)
        self.negative_prompt_embeds = self.negative_prompt_embeds.to(device, dtype)

    def save_student(self, directory: str | os.PathLike) -> Path:
        """The trained student UNet, `save_pretrained` layout (load with `student_unet=path`)."""
        self.student.save_pretrained(str(directory))
        return Path(directory)

    def trainable_parameters(self):
        return [p for p in self.student.parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        super().train(mode)
        for m in (self.teacher, self.vae, self.flow_net):   # frozen parts stay in eval mode
            if m is not None:
                m.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.student.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The UNets' dtype."""
        return next(self.student.parameters()).dtype

    @property
    def vae_dtype(self) -> torch.dtype:
        return module_dtype(self.vae)

    def _section(self, name: str):
        return self.timer.section(name, self.device) if self.timer is not None else contextlib.nullcontext()

    def randn(self, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        """float32 N(0, 1) on the upscaler's device, drawn from `generator` (on its own device)."""
        return randn_tensor(tuple(shape), generator=generator, device=self.device, dtype=torch.float32)

    # ---- schedule maths (float32, latents are float32 outside the UNets)

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod.to(t.device)[t.long()]

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward diffusion q(x_t | x0): sqrt(ab_t) x0 + sqrt(1 - ab_t) noise."""
        return sampling.renoise(x0, self.alpha_bar(t.to(x0.device)).view(-1, 1, 1, 1), noise)

    def _timesteps(self, t, batch: int) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.device)
        return (t.expand(batch) if t.dim() == 0 else t).long()

    # ---- conditioning

    def check_lq(self, lq: torch.Tensor, name: str = "lq") -> torch.Tensor:
        if not torch.is_tensor(lq) or lq.dim() != 4 or lq.shape[1] != 3 or not lq.is_floating_point():
            raise ValueError(f"{name} must be a float (B, 3, h, w) tensor, got "
                             f"{tuple(lq.shape) if torch.is_tensor(lq) else type(lq).__name__}")
        lo, hi = float(lq.min()), float(lq.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"{name} must be in [0, 1], got values in [{lo:.3f}, {hi:.3f}]")
        return lq.to(self.device, torch.float32)

    def lowres_condition(self, lq: torch.Tensor, generator: torch.Generator | None = None,
                         noise: torch.Tensor | None = None) -> LowResCondition:
        """Noise-augment the low-res frame (B, 3, h, w) in [0, 1], as the x4 pipeline does."""
        image = lq.to(self.device, torch.float32) * 2 - 1
        if noise is None:
            noise = self.randn(image.shape, generator)
        level = torch.full((image.shape[0],), self.cfg.noise_level, dtype=torch.long, device=self.device)
        return LowResCondition(self.low_res_scheduler.add_noise(image, noise, level), level)

    def lowres_flow(self, lq: torch.Tensor, prev_lq: torch.Tensor) -> torch.Tensor:
        """(B, 2, h, w) flow current -> previous on the low-res frames (zeros without a flow net)."""
        if self.flow_net is None:
            b, _, h, w = lq.shape
            return torch.zeros(b, 2, h, w, device=lq.device, dtype=torch.float32)
        from models.flow import estimate_flow

        # frames smaller than the flow net accepts (tiny DRFA: 32 px) are estimated k x larger
        # (bilinear) and the flow average-pooled back to the low-res grid and divided by k
        h, w = lq.shape[-2:]
        need = int(getattr(getattr(self.flow_net, "config", None), "min_size", 0) or 0)
        k = max(1, math.ceil(need / min(h, w)))
        a, b = lq.float(), prev_lq.float()
        if k > 1:
            a = F.interpolate(a, scale_factor=k, mode="bilinear", align_corners=False).clamp(0, 1)
            b = F.interpolate(b, scale_factor=k, mode="bilinear", align_corners=False).clamp(0, 1)
        with torch.no_grad():
            flow = estimate_flow(self.flow_net, a, b, self.cfg.flow_iters).float()
        return F.avg_pool2d(flow, k) / k if k > 1 else flow

    @torch.no_grad()
    def temporal_input(self, lq: torch.Tensor, state: TemporalState | None) -> torch.Tensor:
        """(B, C, h, w) extra student channels for frame `lq` given the previous frame's state."""
        b, _, h, w = lq.shape
        if state is None:
            return no_previous(b, h, w, self.scale, self.cfg.temporal_encoding, device=self.device)
        if state.lq.shape != lq.shape:
            raise ValueError(f"state.lq {tuple(state.lq.shape)} does not match lq {tuple(lq.shape)}")
        with self._section("flow"):
            flow = self.lowres_flow(lq.to(self.device), state.lq.to(self.device))
            return warp_previous(state.hr.to(self.device, torch.float32), flow, self.scale,
                                 self.cfg.temporal_encoding)

    # ---- the UNets

    def unet_output(self, which: str, x_t: torch.Tensor, t, cond: LowResCondition,
                    temporal: torch.Tensor | None = None) -> torch.Tensor:
        """Raw UNet output (v or eps) of "student" or "teacher" on [x_t, low-res(, temporal)]."""
        if which == "student":
            if temporal is None:
                raise ValueError("the student needs its temporal input "
                                 "(temporal_input(lq, None) for a first frame)")
            unet, parts = self.student, [x_t, cond.image, temporal]
        elif which == "teacher":
            unet, parts = self.teacher, [x_t, cond.image]
        else:
            raise ValueError(f"unet must be 'student' or 'teacher', got {which!r}")
        b = x_t.shape[0]
        inp = torch.cat([p.to(self.device, self.dtype) for p in parts], dim=1)
        enc = self.prompt_embeds.expand(b, -1, -1)
        t, labels = self._timesteps(t, b), cond.noise_level
        if which == "teacher" and self.guided:        # the pipeline's CFG: [negative, prompt] in one batch
            inp, t, labels = torch.cat([inp, inp]), torch.cat([t, t]), torch.cat([labels, labels])
            enc = torch.cat([self.negative_prompt_embeds.expand(b, -1, -1), enc])
        with self._section("unet"):
            out = unet(inp, t, encoder_hidden_states=enc, class_labels=labels, return_dict=False)[0].float()
        if which == "teacher" and self.guided:
            uncond, text = out.chunk(2)
            out = uncond + self.cfg.guidance_scale * (text - uncond)
        return out

    def predict_x0(self, which: str, x_t: torch.Tensor, t, cond: LowResCondition,
                   temporal: torch.Tensor | None = None) -> torch.Tensor:
        """x0 (latent) from one UNet call at timestep t; keeps the graph (grad-enabled student forward)."""
        t = self._timesteps(t, x_t.shape[0])
        out = self.unet_output(which, x_t, t, cond, temporal)
        return sampling.x0_from_output(self.prediction_type, out, x_t, self.alpha_bar(t).view(-1, 1, 1, 1))

    # ---- samplers

    def _sampler_parts(self, cond: LowResCondition, temporal: torch.Tensor | None,
                       generator: torch.Generator | None, timesteps: tuple[int, ...] | None, unet: str,
                       noise: Sequence[torch.Tensor] | None = None):
        """(schedule, model, noise) of the few-step sampler, as `models.upscaler.sampling` takes
        them: the model runs `unet` on the batch rows still running; the noise is the caller's
        draws or one per timestep from `generator`, in order."""
        ts = tuple(timesteps or self.cfg.student_timesteps)
        b, _, h, w = cond.image.shape
        if noise is None:
            noise = [self.randn((b, self.latent_channels, h, w), generator) for _ in ts]
        elif len(noise) != len(ts):
            raise ValueError(f"noise: {len(ts)} tensors needed (one per timestep), got {len(noise)}")

        def predict(x, t, rows):
            sub = LowResCondition(cond.image[rows], cond.noise_level[rows])
            return self.predict_x0(unet, x, t, sub, None if temporal is None else temporal[rows])

        return ts, predict, (lambda i, rows: noise[i].to(self.device)[rows])

    def sample_few_step(self, cond: LowResCondition, temporal: torch.Tensor | None,
                        generator: torch.Generator | None = None, timesteps: tuple[int, ...] | None = None,
                        unet: str = "student", noise: Sequence[torch.Tensor] | None = None,
                        grad: bool = False) -> torch.Tensor:
        """The student's sampler (the one few-step sampler: training, `restore_clip` and the
        restore job all run it): x0 at each timestep, re-noised with fresh noise to the next.

        Starts from pure noise at the first timestep. `noise`: the caller's draws, one
        (B, latent, h, w) N(0, 1) tensor per timestep (x_T, then one re-noise per later
        timestep; e.g. crops of one whole-frame draw for tiles); None = drawn from `generator`
        in that order. Returns (B, latent, h, w) latents. `grad=True` keeps the graph through
        every step (training on the whole sampler: `DistillConfig.student_input="unrolled"`).
        """
        ts, predict, draws = self._sampler_parts(cond, temporal, generator, timesteps, unet, noise)
        with torch.set_grad_enabled(grad):
            return sampling.sample_few_step(predict, draws, cond.image.shape[0], ts, self.alphas_cumprod)

    @torch.no_grad()
    def sampler_input(self, cond: LowResCondition, temporal: torch.Tensor | None, stop: torch.Tensor,
                      generator: torch.Generator | None = None, unet: str = "student") -> torch.Tensor:
        """What `sample_few_step` feeds its UNet at step `stop[b]` (B,) of the student timesteps:
        pure noise at step 0, the UNet's own x0 re-noised later (the noise drawn as there).
        Distillation trains the student on these inputs (`DistillConfig.student_input`)."""
        ts, predict, draws = self._sampler_parts(cond, temporal, generator, None, unet)
        return sampling.sampler_inputs(predict, draws, ts, self.alphas_cumprod, stop.to(self.device))

    def make_scheduler(self, solver: str | None = None):
        """A fresh diffusers scheduler (they are stateful) from the checkpoint's config."""
        solver = solver or self.cfg.teacher_solver
        if solver == "ddim":
            return DDIMScheduler.from_config(self.scheduler_config)
        if solver == "dpm":
            return DPMSolverMultistepScheduler.from_config(self.scheduler_config)
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")

    @torch.no_grad()
    def sample_multi_step(self, cond: LowResCondition, generator: torch.Generator | None = None,
                          steps: int | None = None, solver: str | None = None, unet: str = "teacher",
                          temporal: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's sampler (DDIM or DPM-Solver++, `cfg.teacher_steps` by default) -> latents."""
        scheduler = self.make_scheduler(solver)
        scheduler.set_timesteps(steps or self.cfg.teacher_steps, device=self.device)
        b, _, h, w = cond.image.shape
        x = self.randn((b, self.latent_channels, h, w), generator) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(x, t)
            out = self.unet_output(unet, inp, t, cond, temporal)
            x = scheduler.step(out, t, x, generator=generator, return_dict=False)[0]
        return x

    # ---- VAE

    def decode(self, latents: torch.Tensor, clamp: bool = True, lq: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 4, h, w) latents -> (B, 3, s*h, s*w) float32 RGB in [0, 1] (unclamped if clamp=False).

        Gradients flow to the latents (the VAE itself is frozen). `lq` (B, 3, h, w): the
        low-res frame, needed by a residual codec (the small prior's), ignored otherwise.
        """
        base = latent_base(self.vae, None if lq is None else lq.to(self.device), self.scaling_factor)
        if base is not None:
            latents = latents + base
        z = latents.to(self.vae_dtype) / self.scaling_factor
        tile = self.cfg.vae_tile
        with self._section("vae"):
            if tile and max(z.shape[-2:]) > tile:           # large frames: overlapping tiles, blended
                cfg = TileConfig(tile=tile, overlap=VAE_TILE_OVERLAP, margin=2, align=1)
                img = tiled_map(lambda part, _: self.vae.decode(part, return_dict=False)[0], z, cfg, self.scale)
            else:
                img = self.vae.decode(z, return_dict=False)[0]
        img = (img.float() + 1) / 2
        return img.clamp(0, 1) if clamp else img

    @torch.no_grad()
    def encode(self, hr: torch.Tensor, lq: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, 4, H/s, W/s) scaled latents (posterior mode);
        relative to `lq`'s bicubic x4 for a residual codec (see `decode`)."""
        with self._section("vae"):
            dist = self.vae.encode((hr.to(self.device, self.vae_dtype) * 2 - 1)).latent_dist
        z = dist.mode().float() * self.scaling_factor
        base = latent_base(self.vae, None if lq is None else lq.to(self.device), self.scaling_factor)
        return z if base is None else z - base

    # ---- restoration

    @torch.no_grad()
    def restore_frame(self, lq: torch.Tensor, state: TemporalState | None = None, *,
                      sampler: str = "student", seed: int | None = 0,
                      generator: torch.Generator | None = None, steps: int | None = None
                      ) -> tuple[torch.Tensor, TemporalState]:
        """Restore one frame (3, h, w) or (B, 3, h, w); returns it at s x size and the next state.

        state=None: first frame of a shot (no previous frame). sampler "student" = the
        few-step temporal student, "teacher" = the multi-step single-image prior (ignores the
        state). Noise comes from `generator`, else from a CPU generator seeded with `seed`.
        """
        single = lq.dim() == 3
        lq = self.check_lq(lq.unsqueeze(0) if single else lq)
        if generator is None:
            generator = torch.Generator("cpu")
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(int(seed))
        cond = self.lowres_condition(lq, generator)
        if sampler == "student":
            temporal = self.temporal_input(lq, state)
            latents = self.sample_few_step(cond, temporal, generator)
        elif sampler == "teacher":
            latents = self.sample_multi_step(cond, generator, steps=steps)
        else:
            raise ValueError(f"sampler must be 'student' or 'teacher', got {sampler!r}")
        hr = self.decode(latents, lq=lq)
        new_state = TemporalState(lq=lq, hr=hr)
        return (hr[0] if single else hr), new_state

    @torch.no_grad()
    def restore_clip(self, lq_clip: torch.Tensor, *, sampler: str = "student", seed: int = 0,
                     state: TemporalState | None = None, steps: int | None = None) -> torch.Tensor:
        """Restore (T, 3, h, w) (or (B, T, 3, h, w)) in order -> (T, 3, s*h, s*w).

        Frame t uses seed `seed + t` and is conditioned on the restored frame t-1 (frame 0 on
        `state`, None = start of a shot), exactly as chained `restore_frame` calls.
        """
        batched = lq_clip.dim() == 5
        if lq_clip.dim() not in (4, 5):
            raise ValueError(f"lq_clip must be (T, 3, h, w) or (B, T, 3, h, w), got {tuple(lq_clip.shape)}")
        clip = lq_clip if batched else lq_clip.unsqueeze(0)
        frames = []
        for t in range(clip.shape[1]):
            hr, state = self.restore_frame(clip[:, t], state, sampler=sampler, seed=seed + t, steps=steps)
            frames.append(hr)
        out = torch.stack(frames, dim=1)
        return out if batched else out[0]

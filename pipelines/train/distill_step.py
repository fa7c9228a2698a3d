"""One step of the efficient adversarial distillation, without Ray or DeepSpeed.

`generator_step(models, batch, cfg) -> (loss, metrics)` and
`discriminator_step(models, batch, cfg) -> (loss, metrics)` are plain functions over a
batch of clips, `lq (B, T, 3, h, w)` and `hq (B, T, 3, s*h, s*w)` in [0, 1]; they return
the loss (the caller runs `backward` / `engine.backward`) and float metrics.

Generator step, per clip (frames in order, as at inference):
1. one student timestep s from T_student per clip (all its frames share it, so that
   T-LPIPS compares frames of the same quality); the student's input at s is what its own
   few-step sampler feeds it there (`student_input="sampled"`, default): pure noise at the
   first timestep, its own earlier x0 re-noised later (run without gradients, at most 3
   extra calls). ADD forward-diffuses the real latent to s instead ("diffused_real"),
   "noise_first" does so except at the first timestep. Measured on the small prior: a
   UNet trained on forward-diffused inputs is off its training distribution at every step
   of the few-step sampler (see `pipelines.train.prior_objectives`). "unrolled" (not in the
   paper) trains the whole sampler instead: its 4 steps with gradients, each loss on the
   final x0, the frame inference restores (4 grad calls per frame instead of 1 + up to 3);
2. the temporal input of frame t is frame t-1 as inference would have restored it: the
   student's few-step sampler run on it without gradients (`previous_frame="sampled"`,
   default: no train/inference mismatch, costs T-1 extra no-grad samples per clip), warped
   with the frozen flow net; frame 0 gets the explicit "no previous frame" input. Cheaper:
   "student" (the detached one-step prediction at s, whose quality depends on s) or "gt";
3. L_distill: x0 re-noised to tau ~ U[teacher_t_min, teacher_t_max], frozen teacher's x0 as
   the stop-grad target (`models.losses`); L_adv^G: D on x0 re-noised to s; L_T-LPIPS on
   the decoded frames against hq (the frozen VAE decoder passes gradients to the latents).

Discriminator isolation (DeepSpeed issue #4923: with two ZeRO engines, a generator loss that
backprops into the discriminator engine's parameters breaks the D engine's gradient
bookkeeping). In the generator step D runs with *detached* parameters through
`torch.func.functional_call` (default, `discriminator_isolation="detached"`): gradients
reach the student through D's activations, never D's parameters, and D's state is not
touched (no flags flipped, so nothing to restore if the step raises). The alternative
"requires_grad" flips D's parameters to requires_grad=False for the step and restores them.
With ZeRO-3 (partitioned D parameters) neither works on the raw module: gather D's
parameters first. When `models.discriminator` is a DeepSpeed engine, the isolated forward
runs its raw `engine.module`: the engine's own forward would hook D's backward prologue
into the generator's graph, and D's ZeRO-2 epilogue would then run inside the generator's
backward (IndexError in `reduce_ipg_grads`, seen with two ZeRO-2 engines). Non-isolated
calls (the discriminator step) go through the engine. Teacher, flow net and VAE are frozen
in `VideoUpscaler`.

Discriminator step: real = VAE latents of hq forward-diffused to s, fake = the student's x0
(detached) forward-diffused to s with fresh noise, both with the frame's noised low-res
input. Pass `keep={}` to `generator_step` and then `fake=keep["fake"]` to
`discriminator_step` to reuse the generator step's samples; otherwise the discriminator
step makes its own with the student under no_grad.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import NamedTuple

import torch
from torch.func import functional_call

from models.discriminator import LatentDiscriminator
from models.losses import (ADVERSARIAL_FORMS, DISTILL_WEIGHTINGS, LossWeights, TemporalLPIPS,
                           discriminator_adversarial_loss, distillation_loss,
                           generator_adversarial_loss, total_loss)
from models.upscaler.video import LowResCondition, TemporalState, VideoUpscaler


STUDENT_INPUTS = ("sampled", "noise_first", "diffused_real", "unrolled")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    distill_weight: float = 1.0              # weight of L_distill (Eq. 6)
    lambda_adv: float = 0.05                 # lambda1, paper Sec. 3.1
    lambda_tlpips: float = 0.1               # lambda2, paper Sec. 3.1
    # weight of L_rec = MSE(student x0, ground-truth latent), not in the paper (0 = its Eq. 6); for a
    # teacher whose re-noised targets are no better than the student's own x0 (see the README)
    lambda_rec: float = 0.0
    adversarial_form: str = "hinge"          # "hinge" (ADD; default), "non_saturating", "paper" (Eq. 3-4 literally)
    distill_weighting: str = "alpha_bar"     # c(tau): "alpha_bar" (ADD) or "sds"
    teacher_t_min: int = 20                  # teacher re-noising timesteps tau ~ U[min, max] (of 1000)
    teacher_t_max: int = 980                 # ... and their upper bound
    # the student's input at s: "sampled" = what its few-step sampler feeds it there (no grad);
    # "noise_first" = pure noise at T_student[0], the real latent forward-diffused to s later;
    # "diffused_real" = the real latent forward-diffused to s at every s (ADD); "unrolled" = not one
    # step: the student's whole few-step sampler with gradients, every loss on its final x0 (what
    # inference restores; s then only sets the discriminator's re-noising); not in the paper
    student_input: str = "sampled"
    # temporal input of frame t: "sampled" = frame t-1 restored by the full few-step sampler (no
    # grad), as at inference; "student" = the one-step prediction at s (cheaper); "gt" = ground truth
    previous_frame: str = "sampled"
    discriminator_isolation: str = "detached"  # "detached" (functional_call) or "requires_grad"
    # the T_student entries a training clip draws s from; () = all of them. E.g. (750, 500, 250)
    # leaves out t=0, whose x0 barely differs from its input with v-prediction
    train_timesteps: tuple[int, ...] = ()

    def __post_init__(self):
        checks = [("adversarial_form", ADVERSARIAL_FORMS), ("distill_weighting", DISTILL_WEIGHTINGS),
                  ("student_input", STUDENT_INPUTS), ("previous_frame", ("sampled", "student", "gt")),
                  ("discriminator_isolation", ("detached", "requires_grad"))]
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')}: must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0 <= self.teacher_t_min <= self.teacher_t_max <= 999:
            raise ValueError(f"need 0 <= teacher_t_min <= teacher_t_max <= 999, got "
                             f"{self.teacher_t_min}, {self.teacher_t_max}")

    @property
    def weights(self) -> LossWeights:
        return LossWeights(self.distill_weight, self.lambda_adv, self.lambda_tlpips)


@dataclasses.dataclass
class DistillModels:
    upscaler: VideoUpscaler                  # student (trained) + frozen teacher, VAE, flow net
    discriminator: LatentDiscriminator       # trained by discriminator_step
    tlpips: TemporalLPIPS | None = None      # needed when lambda_tlpips > 0


class AdversarialBatch(NamedTuple):
    """What the discriminator compares, flattened over (B*T) frames."""

    real_x0: torch.Tensor      # (N, 4, h, w) VAE latents of the ground truth
    fake_x0: torch.Tensor      # (N, 4, h, w) the student's x0, detached
    timesteps: torch.Tensor    # (N,) the student timestep s of each frame
    lowres: torch.Tensor       # (N, 3, h, w) noised low-res input
    noise_level: torch.Tensor  # (N,) long


class Rollout(NamedTuple):
    x0: torch.Tensor               # (B, T, 4, h, w) student predictions (graph kept if grad)
    rgb: torch.Tensor | None       # (B, T, 3, H, W) decoded, unclamped (graph kept) or None
    lowres: torch.Tensor           # (B, T, 3, h, w)
    noise_level: torch.Tensor      # (B, T)
    timesteps: torch.Tensor        # (B,) student timestep per clip
    real_x0: torch.Tensor          # (B, T, 4, h, w)


def unpack_batch(batch, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lq, hq) from a dict with "lq"/"hq" or a pair; checks shapes and the scale."""
    lq, hq = (batch["lq"], batch["hq"]) if isinstance(batch, dict) else batch
    if lq.dim() != 5 or hq.dim() != 5 or lq.shape[2] != 3 or hq.shape[2] != 3:
        raise ValueError(f"batch must hold lq (B, T, 3, h, w) and hq (B, T, 3, H, W), got "
                         f"{tuple(lq.shape)} and {tuple(hq.shape)}")
    b, t, _, h, w = lq.shape
    if hq.shape != (b, t, 3, h * scale, w * scale):
        raise ValueError(f"hq must be {(b, t, 3, h * scale, w * scale)} for lq {tuple(lq.shape)} "
                         f"(x{scale}), got {tuple(hq.shape)}")
    return lq, hq


def _randint(low: int, high: int, n: int, generator, device) -> torch.Tensor:
    gdev = generator.device if generator is not None else "cpu"
    return torch.randint(low, high, (n,), generator=generator, device=gdev).to(device)


def student_rollout(models: DistillModels, lq: torch.Tensor, hq: torch.Tensor, cfg: DistillConfig,
                    generator: torch.Generator | None = None, grad: bool = True,
                    decode: bool = True) -> Rollout:
    """Run the student over the clips frame by frame (see the module docstring)."""
    up = models.upscaler
    dev = up.device
    b, t = lq.shape[:2]
    lq = lq.to(dev, torch.float32)
    hq = hq.to(dev, torch.float32)
    ts = torch.tensor(up.cfg.student_timesteps, device=dev)
    draws = ts if not cfg.train_timesteps else torch.tensor(cfg.train_timesteps, device=dev)
    bad = set(draws.tolist()) - set(ts.tolist())
    if bad:
        raise ValueError(f"train_timesteps {sorted(bad)} are not student timesteps {tuple(ts.tolist())}")
    s = draws[_randint(0, len(draws), b, generator, dev)]                 # (B,)
    step = (s[:, None] == ts[None]).float().argmax(1)                      # (B,) index of s in T_student
    from_noise = (s == ts[0]) if cfg.student_input == "noise_first" else torch.zeros_like(s, dtype=torch.bool)
    real_x0 = up.encode(hq.flatten(0, 1), lq.flatten(0, 1)).unflatten(0, (b, t))  # (B, T, 4, h, w)
    unrolled = cfg.student_input == "unrolled"                            # the whole sampler, with gradients
    state: TemporalState | None = None
    x0s, rgbs, lows, levels = [], [], [], []
    for i in range(t):
        lq_i = lq[:, i]
        temporal = up.temporal_input(lq_i, state)                       # no grad (frozen flow)
        cond = up.lowres_condition(lq_i, generator)
        if unrolled:
            x0 = up.sample_few_step(cond, temporal, generator, grad=grad)   # what inference restores
        elif cfg.student_input == "sampled":
            x_s = up.sampler_input(cond, temporal, step, generator)
        else:
            noise = up.randn(real_x0[:, i].shape, generator)
            x_s = torch.where(from_noise.view(-1, 1, 1, 1), noise, up.add_noise(real_x0[:, i], s, noise))
        with torch.set_grad_enabled(grad):
            if not unrolled:
                x0 = up.predict_x0("student", x_s, s, cond, temporal)
            rgb = up.decode(x0, clamp=False, lq=lq_i) if decode else None
        x0s.append(x0)
        rgbs.append(rgb)
        lows.append(cond.image)
        levels.append(cond.noise_level)
        if i + 1 < t:
            if cfg.previous_frame == "gt":
                prev = hq[:, i]
            elif cfg.previous_frame == "sampled" and unrolled:          # this frame, as inference restored it
                with torch.no_grad():
                    prev = up.decode(x0.detach(), lq=lq_i)
            elif cfg.previous_frame == "sampled":                       # exactly what inference feeds
                prev = up.decode(up.sample_few_step(cond, temporal, generator), lq=lq_i)
            elif rgb is not None:
                prev = rgb.detach().clamp(0, 1)
            else:
                with torch.no_grad():
                    prev = up.decode(x0.detach(), lq=lq_i)
            state = TemporalState(lq=lq_i, hr=prev)
    rgb_all = torch.stack(rgbs, 1) if decode else None
    return Rollout(torch.stack(x0s, 1), rgb_all, torch.stack(lows, 1), torch.stack(levels, 1), s, real_x0)


def _discriminate(models: DistillModels, x_t, timesteps, lowres, noise_level, isolation: str | None):
    """D's logits; `isolation` keeps D's parameters out of the autograd graph (generator step)."""
    d = models.discriminator
    args = (x_t, timesteps, lowres, noise_level, models.upscaler.prompt_embeds)
    if isolation is None:
        return d(*args)
    # Isolated (generator step): the raw module even when D is wrapped in a DeepSpeed engine,
    # whose forward would hook D's backward prologue into the generator's graph (issue #4923).
    inner = getattr(d, "_modules", {}).get("module")
    if isinstance(inner, LatentDiscriminator):
        d = inner
    if isolation == "detached":
        params = {name: p.detach() for name, p in d.named_parameters()}
        return functional_call(d, params, args)
    with _parameters_frozen(d):
        return d(*args)


@contextlib.contextmanager
def _parameters_frozen(module: torch.nn.Module):
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def generator_step(models: DistillModels, batch, cfg: DistillConfig = DistillConfig(),
                   generator: torch.Generator | None = None, keep: dict | None = None
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """Student loss of Eq. 6 on a batch of clips; returns (loss, metrics). No backward here.

    `keep`: if a dict is given, `keep["fake"]` receives the `AdversarialBatch` of this step
    (detached) for `discriminator_step(..., fake=keep["fake"])`.
    """
    up = models.upscaler
    lq, hq = unpack_batch(batch, up.scale)
    b, t = lq.shape[:2]
    use_tlpips = cfg.lambda_tlpips > 0
    if use_tlpips and models.tlpips is None:
        raise ValueError("lambda_tlpips > 0 needs DistillModels.tlpips")
    if use_tlpips and t < 2:
        raise ValueError(f"T-LPIPS needs clips of at least 2 frames, got T={t}")
    roll = student_rollout(models, lq, hq, cfg, generator, grad=True, decode=use_tlpips)
    n = b * t
    x0 = roll.x0.flatten(0, 1)                                             # (N, 4, h, w)
    s = roll.timesteps.repeat_interleave(t)                                # (N,)
    cond = LowResCondition(roll.lowres.flatten(0, 1), roll.noise_level.flatten(0, 1))
    dev = x0.device

    zero = torch.zeros((), device=dev)
    # distillation: teacher x0 on the student's x0 re-noised to tau (target without grad)
    l_distill = zero
    if cfg.distill_weight != 0:
        tau = _randint(cfg.teacher_t_min, cfg.teacher_t_max + 1, n, generator, dev)
        with torch.no_grad():
            x_tau = up.add_noise(x0.detach(), tau, up.randn(x0.shape, generator))
            target = up.predict_x0("teacher", x_tau, tau, cond)
        l_distill = distillation_loss(x0, target, up.alpha_bar(tau), cfg.distill_weighting)

    # adversarial: D (isolated) on the student's x0 re-noised to s
    l_adv, fake_logits = zero, []
    if cfg.lambda_adv != 0:
        x_s = up.add_noise(x0, s, up.randn(x0.shape, generator))
        fake_logits = _discriminate(models, x_s, s, cond.image, cond.noise_level, cfg.discriminator_isolation)
        l_adv = generator_adversarial_loss(fake_logits, cfg.adversarial_form)

    l_tlpips = models.tlpips(roll.rgb, hq.to(roll.rgb.device, torch.float32)) if use_tlpips else zero
    l_rec = (x0.float() - roll.real_x0.flatten(0, 1).float()).pow(2).mean() if cfg.lambda_rec else zero
    loss = total_loss(l_distill, l_adv, l_tlpips, cfg.weights) + cfg.lambda_rec * l_rec
    if keep is not None:
        keep["fake"] = AdversarialBatch(roll.real_x0.flatten(0, 1), x0.detach(), s, cond.image, cond.noise_level)
    metrics = {
        "loss": float(loss.detach()),
        "distill": float(l_distill.detach()),
        "adv_g": float(l_adv.detach()),
        "tlpips": float(l_tlpips.detach()),
        "rec": float(l_rec.detach()),
        "g_fake_logit": float(torch.stack([f.detach().mean() for f in fake_logits]).mean()) if fake_logits else 0.0,
        "student_t_mean": float(s.float().mean()),
    }
    return loss, metrics


@torch.no_grad()
def student_fakes(models: DistillModels, batch, cfg: DistillConfig = DistillConfig(),
                  generator: torch.Generator | None = None) -> AdversarialBatch:
    """The discriminator's inputs made with the current student, without gradients."""
    up = models.upscaler
    lq, hq = unpack_batch(batch, up.scale)
    t = lq.shape[1]
    roll = student_rollout(models, lq, hq, cfg, generator, grad=False, decode=False)
    return AdversarialBatch(roll.real_x0.flatten(0, 1), roll.x0.flatten(0, 1),
                            roll.timesteps.repeat_interleave(t), roll.lowres.flatten(0, 1),
                            roll.noise_level.flatten(0, 1))


def discriminator_step(models: DistillModels, batch, cfg: DistillConfig = DistillConfig(),
                       generator: torch.Generator | None = None, fake: AdversarialBatch | None = None
                       ) -> tuple[torch.Tensor, dict[str, float]]:
    """Discriminator loss (Eq. 4 in `cfg.adversarial_form`) on real vs student latents at s."""
    up = models.upscaler
    if fake is None:
        fake = student_fakes(models, batch, cfg, generator)
    s = fake.timesteps
    with torch.no_grad():
        real_s = up.add_noise(fake.real_x0, s, up.randn(fake.real_x0.shape, generator))
        fake_s = up.add_noise(fake.fake_x0.detach(), s, up.randn(fake.fake_x0.shape, generator))
    real_logits = _discriminate(models, real_s, s, fake.lowres, fake.noise_level, None)
    fake_logits = _discriminate(models, fake_s, s, fake.lowres, fake.noise_level, None)
    loss = discriminator_adversarial_loss(real_logits, fake_logits, cfg.adversarial_form)
    real_mean = torch.stack([r.detach().mean() for r in real_logits]).mean()
    fake_mean = torch.stack([f.detach().mean() for f in fake_logits]).mean()
    acc = torch.stack([((r.detach() > 0).float().mean() + (f.detach() < 0).float().mean()) / 2
                       for r, f in zip(real_logits, fake_logits)]).mean()
    return loss, {"d_loss": float(loss.detach()), "d_real_logit": float(real_mean),
                  "d_fake_logit": float(fake_mean), "d_accuracy": float(acc)}

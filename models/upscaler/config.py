"""The upscaler's configuration: which prior, the prompt, guidance, noise level, the student's
timesteps, the teacher's sampler, the temporal encoding and flow iterations."""
from __future__ import annotations

import dataclasses

from models.temporal import temporal_channels

SD_X4_REPO = "stabilityai/stable-diffusion-x4-upscaler"


SOLVERS = ("ddim", "dpm")


def check_timesteps(timesteps, name: str) -> None:
    """A few-step schedule: non-empty, strictly decreasing, in [0, 999]; else ValueError naming `name`."""
    ts = tuple(timesteps)
    if not ts or any(not 0 <= t < 1000 for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"{name} must be strictly decreasing in [0, 999], got {ts}")


VAE_TILE_OVERLAP = 16      # latent px shared by neighbouring VAE decode tiles (64 px of output at x4)


@dataclasses.dataclass(frozen=True)
class UpscalerConfig:
    # the prior: a hub id (the paper's SD x4 Upscaler), a save_pretrained folder (unet/ vae/ scheduler/
    # low_res_scheduler/; jobs/train_prior.py's export, local or s3://), or a built-in random
    # architecture ("small", "tiny", "sd-x4-random")
    pretrained: str = SD_X4_REPO
    prompt: str = ""                                      # the one fixed prompt; "" = no text guidance
    negative_prompt: str = ""                             # the teacher's guidance baseline (the pipeline's "")
    guidance_scale: float = 9.0                           # teacher's classifier-free guidance (pipeline default; >1 on)
    noise_level: int = 20                                 # low-res noise augmentation, pipeline default (max 350)
    student_timesteps: tuple[int, ...] = (750, 500, 250, 0)  # paper's T_student; the first starts from noise
    teacher_steps: int = 50                               # teacher sampler steps (the paper's 12x: 4 vs 50)
    teacher_solver: str = "ddim"                          # "ddim" (the checkpoint's) or "dpm" (DPM-Solver++)
    # warped previous frame at latent size: "unshuffle" (3*s*s ch, lossless) or "bilinear" (3 ch)
    temporal_encoding: str = "unshuffle"
    flow_iters: int | None = None                         # flow refinement iterations; None = the flow net's default
    # latent px: latents with a larger side are VAE-decoded in overlapping tiles (models.tiles; a 4K
    # frame is 960x540 latent px, ~16 GB of decoder activations at once); 0 = never
    vae_tile: int = 0

    def __post_init__(self):
        if self.teacher_solver not in SOLVERS:
            raise ValueError(f"teacher_solver must be one of {SOLVERS}, got {self.teacher_solver!r}")
        check_timesteps(self.student_timesteps, "student_timesteps")
        if not 0 <= self.noise_level <= 350:
            raise ValueError(f"noise_level must be in [0, 350], got {self.noise_level}")
        if self.teacher_steps < 1:
            raise ValueError(f"teacher_steps must be >= 1, got {self.teacher_steps}")
        if not self.guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        temporal_channels(self.temporal_encoding, 4)  # validates the name
        if self.vae_tile and self.vae_tile <= VAE_TILE_OVERLAP + 1:
            raise ValueError(f"vae_tile must be 0 or > {VAE_TILE_OVERLAP + 1} latent px, got {self.vae_tile}")

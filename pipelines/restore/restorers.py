"""Restorers: one frame at a time with an explicit recurrent state.

`load_restorer(cfg, device)` gives the restorer `cfg.model` names: `BicubicRestorer` (the
non-learned baseline) or `DiffusionRestorer` (the few-step student of a model folder,
`pipelines.model_folder`), wrapped in `TiledRestorer` when frames are restored in tiles.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F

from pipelines.common.devices import parse_dtype
from pipelines.restore.config import RestoreConfig
from pipelines.restore.tiling import TiledRestorer


class Restorer(Protocol):
    """One frame at a time with an explicit recurrent state (None = first frame of a shot).

    `noise_channels`: channels of the LR-sized N(0, 1) tensors one frame consumes, in draw
    order (the caller draws them, so that tiles can share one whole-frame draw).
    `state_from(lq, hr)`: the state that a frame and its restoration leave (for tiles).
    """

    scale: int
    noise_channels: tuple[int, ...]

    def restore_frame(self, lq: torch.Tensor, state: Any, noise: Sequence[torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, Any]: ...

    def state_from(self, lq: torch.Tensor, hr: torch.Tensor) -> Any: ...


class BicubicRestorer:
    """The non-learned baseline: bicubic (or nearest) upscaling, stateless, noise-free."""

    noise_channels: tuple[int, ...] = ()

    def __init__(self, scale: int = 4, mode: str = "bicubic"):
        if mode not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"mode must be bicubic, bilinear or nearest, got {mode!r}")
        self.scale, self.mode = int(scale), mode

    def restore_frame(self, lq, state=None, noise=None):
        kw = {} if self.mode == "nearest" else {"align_corners": False}
        hr = F.interpolate(lq.float(), scale_factor=self.scale, mode=self.mode, **kw).clamp(0, 1)
        return hr, None

    def state_from(self, lq, hr):
        return None


class DiffusionRestorer:
    """`VideoUpscaler.sample_few_step` (the student's sampler) with caller-drawn noise.

    The same draw order as `VideoUpscaler.restore_frame(sampler="student")` (low-res
    augmentation noise, x_T, one re-noise per later timestep): given the draws of a generator
    it returns exactly what `restore_frame(generator=...)` returns (tested). Taking the noise
    as tensors lets a tiled frame use crops of one whole-frame draw.
    """

    state_takes_context = True             # `state_from(..., context=)`: tiles with a halo (tiling.py)

    def __init__(self, upscaler, timesteps: Sequence[int] | None = None):
        self.up = upscaler
        self.scale = int(upscaler.scale)
        self.timesteps = tuple(timesteps or upscaler.cfg.student_timesteps)
        lat = int(upscaler.latent_channels)
        self.noise_channels = (3,) + (lat,) * len(self.timesteps)

    def randn(self, shape, generator):
        return self.up.randn(shape, generator)

    def state_from(self, lq, hr, context=None):
        """The state a tile of the previous frame leaves; `context` = (this frame's LR crop of the
        same window, (y0, y1, x0, x1) of the tile within it): flow and warp then run on the
        whole window (the tile's halo) and the temporal input is cut to the tile."""
        from models.upscaler.video import TemporalState

        state = TemporalState(lq=lq.to(self.up.device), hr=hr.to(self.up.device))
        return state if context is None else WindowState(state, context[0].to(self.up.device), context[1])

    def _temporal(self, lq, state):
        if isinstance(state, WindowState):
            y0, y1, x0, x1 = state.crop
            return self.up.temporal_input(state.current, state.previous)[..., y0:y1, x0:x1]
        return self.up.temporal_input(lq, state)

    @torch.no_grad()
    def restore_frame(self, lq, state=None, noise=None):
        from models.upscaler.video import TemporalState

        up = self.up
        lq = up.check_lq(lq)
        b, _, h, w = lq.shape
        noise = draw_noise(self, b, h, w, None) if noise is None else noise
        hr = self._sample(lq, self._temporal(lq, state), noise)
        return hr, TemporalState(lq=lq, hr=hr)

    @torch.no_grad()
    def restore_batch(self, lqs, states, noises):
        """Frame t of several streams in one UNet batch: lqs[i] (1, 3, h, w) (one size), each with
        its own state and noise; the flow runs per stream (batch 1, as `restore_frame`)."""
        from models.upscaler.video import TemporalState

        up = self.up
        lqs = [up.check_lq(lq) for lq in lqs]
        temporal = torch.cat([self._temporal(lq, state) for lq, state in zip(lqs, states)])
        noise = [torch.cat(parts) for parts in zip(*noises)]
        hr = self._sample(torch.cat(lqs), temporal, noise)
        return [(hr[i:i + 1], TemporalState(lq=lq, hr=hr[i:i + 1])) for i, lq in enumerate(lqs)]

    def _sample(self, lq, temporal, noise):
        """(B, 3, h, w) -> (B, 3, sh, sw): the few-step sampler on caller-drawn noise."""
        up = self.up
        noise = [n.to(up.device) for n in noise]
        cond = up.lowres_condition(lq, noise=noise[0])
        x0 = up.sample_few_step(cond, temporal, timesteps=self.timesteps, noise=noise[1:])
        return up.decode(x0, lq=lq)

    def section_seconds(self) -> dict[str, float]:
        timer = getattr(self.up, "timer", None)
        return dict(timer.seconds) if timer is not None else {}


class WindowState(NamedTuple):
    """A tile's temporal state with its halo: the previous frame's window, this frame's, and
    where the tile lies in the window."""

    previous: Any                          # TemporalState of the window (LR + restored HR)
    current: torch.Tensor                  # (1, 3, wh, ww) this frame's LR window
    crop: tuple[int, int, int, int]        # (y0, y1, x0, x1) of the tile inside the window, LR px


def draw_noise(restorer, batch: int, height: int, width: int, generator: torch.Generator | None
               ) -> list[torch.Tensor]:
    """The N(0, 1) tensors one (batch, 3, height, width) frame consumes, in draw order."""
    randn = getattr(restorer, "randn", None) or (lambda shape, g: torch.randn(shape, generator=g))
    return [randn((batch, c, height, width), generator) for c in restorer.noise_channels]


class ColorFixedRestorer:
    """Wrap a restorer: each restored frame gets `models.color_fix` (toward the bicubic upscale
    of its input) on its way out; the recurrent state keeps the raw restoration, as trained."""

    def __init__(self, inner, mode: str):
        from models.color_fix import COLOR_FIXES

        if mode not in COLOR_FIXES:
            raise ValueError(f"--color-fix: must be one of {COLOR_FIXES}, got {mode!r}")
        self.inner, self.mode = inner, mode
        self.scale = inner.scale
        self.noise_channels = tuple(getattr(inner, "noise_channels", ()))

    @property
    def tiles_last_frame(self) -> int:
        return int(getattr(self.inner, "tiles_last_frame", 1))

    def randn(self, shape, generator):
        inner = getattr(self.inner, "randn", None)
        return inner(shape, generator) if inner is not None else torch.randn(shape, generator=generator)

    def state_from(self, lq, hr):
        return self.inner.state_from(lq, hr)

    def restore_frame(self, lq, state=None, noise=None):
        return self.restore_batch([lq], [state], [noise])[0]

    def restore_batch(self, lqs, states, noises):
        from models.color_fix import color_fix

        out = restore_batch(self.inner, lqs, states, noises)
        return [(color_fix(hr, lq, self.mode), state) for lq, (hr, state) in zip(lqs, out)]


def restore_batch(restorer, lqs: Sequence[torch.Tensor], states: Sequence[Any],
                  noises: Sequence[Sequence[torch.Tensor]]) -> list[tuple[torch.Tensor, Any]]:
    """[(hr, next state)] of frames of one size from several streams: in one batch where the
    restorer can (`restore_batch`) and every noise is given, else one by one (a None noise: the
    restorer draws its own). Either way each stream gets exactly what `restore_frame` would
    give it alone, up to the kernels' batch-size rounding."""
    batched = getattr(restorer, "restore_batch", None)
    if batched is not None and len(lqs) > 1 and all(n is not None for n in noises):
        return batched(list(lqs), list(states), list(noises))
    return [restorer.restore_frame(lq, state, noise) for lq, state, noise in zip(lqs, states, noises)]


def device_for(cfg: RestoreConfig) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() and (cfg.num_gpus > 0 or not cfg.ray) else "cpu")


def load_restorer(cfg: RestoreConfig, device: torch.device | str | None = None) -> Restorer:
    """The restorer named by `cfg.model`, on `device`, wrapped for tiling when cfg.tile > 0.

    A model directory holds the upscaler bundle (`unet/ vae/ scheduler/ low_res_scheduler/
    prompt_embeds.safetensors`, `UpscalerBundle.save_pretrained`), optionally a trained
    student UNet in `student/`, the DRFA flow net as `flow.safetensors`, and the settings it was
    trained with in `restorer.json` (what jobs/distill.py exports).
    """
    device = torch.device(device) if device is not None else device_for(cfg)
    if cfg.model == "bicubic":
        inner: Restorer = BicubicRestorer(cfg.scale)
    else:
        inner = DiffusionRestorer(_load_upscaler(cfg, device), cfg.timesteps or None)
    restorer = TiledRestorer(inner, cfg.tile_config()) if cfg.tile else inner
    return ColorFixedRestorer(restorer, cfg.color_fix) if cfg.color_fix != "none" else restorer


def _load_upscaler(cfg: RestoreConfig, device: torch.device):
    """The model folder exported by jobs/distill.py, with the settings it was trained with
    (its restorer.json); --flow-iters, when given, overrides the flow net's default."""
    from models.timing import SectionTimer
    from pipelines import model_folder

    overrides = {"flow_iters": cfg.flow_iters} if cfg.flow_iters else {}
    overrides["vae_tile"] = cfg.vae_tile
    try:
        up = model_folder.load(cfg.model, device, dtype=parse_dtype(cfg.dtype, device),
                               vae_dtype=parse_dtype(cfg.vae_dtype, device), **overrides)
    except ValueError as exc:
        raise ValueError(f"--model {cfg.model}: not an upscaler directory ({exc})") from exc
    if cfg.profile:
        up.timer = SectionTimer()
    return up

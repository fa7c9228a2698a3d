"""A lossless pixel-space "VAE": space-to-depth x4 (the `small` prior's codec).

The x4 upscaler's UNet denoises a latent at the low-res size, and its `AutoencoderKL`
turns that latent into pixels. A small VAE trained for minutes on a CPU caps what any
prior on it can reach (the tiny one reconstructs only ~1.6 dB better than bicubic). This
codec has no weights and no ceiling: it rearranges each s x s block of the HR image into
3 * s * s channels at the low-res size (`pixel_unshuffle`), and back (`pixel_shuffle`):

    encode: (B, 3, H, W) in [-1, 1]  ->  (B, 3 s^2, H/s, W/s)      (s = 4: 48 channels)
    decode: (B, 3 s^2, H/s, W/s)     ->  (B, 3, H, W)              exact inverse

so `decode(encode(x)) == x` bit for bit. The UNet then diffuses in pixel space at the
low-res grid, as the paper's "arbitrary single-image diffusion prior" allows.

`residual=True` (the small prior's setting): the latent the UNet diffuses is the HR frame
*minus the bicubic x4 of its low-res input* (`latent_base`), so a prior that has learnt
nothing yet restores bicubic, and everything it learns is a correction of it (blur, noise,
compression undone; detail added). Encoding and decoding then need the low-res frame:
`VideoUpscaler.encode(hr, lq)` / `.decode(latents, lq=lq)` add and remove the base. It speaks
the part of `AutoencoderKL`'s interface d2vr uses (`encode(x).latent_dist.mode()`,
`decode(z).sample` / `decode(z, return_dict=False)[0]`, `config.latent_channels`,
`config.scaling_factor`), and saves/loads as a config-only folder in the hub layout
(`vae/config.json` with `_class_name` "PixelUnshuffleCodec").
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

CODEC_CLASS = "PixelUnshuffleCodec"


class ExactLatent:
    """A latent 'distribution' with no spread: `mode()` and `sample()` are the latent itself."""

    def __init__(self, z: torch.Tensor):
        self.z = z

    def mode(self) -> torch.Tensor:
        return self.z

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.z

    def kl(self) -> torch.Tensor:
        return torch.zeros(self.z.shape[0], device=self.z.device, dtype=self.z.dtype)


class EncoderOutput(NamedTuple):
    latent_dist: ExactLatent


class DecoderOutput(NamedTuple):
    sample: torch.Tensor


class PixelUnshuffleCodec(nn.Module, ConfigMixin):
    """space-to-depth by `downscale` (4 = the x4 upscaler's latent grid); no parameters."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, downscale: int = 4, in_channels: int = 3, scaling_factor: float = 1.0,
                 residual: bool = False):
        super().__init__()
        if downscale < 1 or in_channels < 1 or scaling_factor <= 0:
            raise ValueError(f"bad codec config: downscale {downscale}, in_channels {in_channels}, "
                             f"scaling_factor {scaling_factor}")
        # a 0-d buffer carries the codec's device and dtype (it has no parameters)
        self.register_buffer("probe", torch.zeros(()), persistent=False)

    @property
    def latent_channels(self) -> int:
        return self.config.in_channels * self.config.downscale ** 2

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """(B, C, H, W) -> (B, C s^2, H/s, W/s); H and W must be multiples of s."""
        s = self.config.downscale
        if x.shape[-1] % s or x.shape[-2] % s:
            raise ValueError(f"frame {tuple(x.shape[-2:])} is not a multiple of the codec's {s}")
        out = EncoderOutput(ExactLatent(F.pixel_unshuffle(x, s)))
        return out if return_dict else (out.latent_dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """(B, C s^2, h, w) -> (B, C, s h, s w), the exact inverse of `encode`."""
        out = DecoderOutput(F.pixel_shuffle(z, self.config.downscale))
        return out if return_dict else (out.sample,)

    # ---- hub layout: config only (there are no weights)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        self.save_config(str(directory))
        return Path(directory)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, subfolder: str | None = None,
                        torch_dtype: torch.dtype | None = None, **kwargs) -> "PixelUnshuffleCodec":
        config = cls.load_config(str(source), subfolder=subfolder, **hub_kwargs(kwargs))
        codec = cls.from_config(config)
        return codec.to(torch_dtype) if torch_dtype is not None else codec


HUB_KWARGS = ("revision", "local_files_only", "cache_dir", "token", "force_download", "proxies")


def hub_kwargs(kwargs: dict) -> dict:
    """The `from_pretrained` options that locate files (revision, cache, token, offline)."""
    return {k: v for k, v in kwargs.items() if k in HUB_KWARGS}


def codec_class_name(source: str, subfolder: str = "vae", **kwargs) -> str:
    """`_class_name` of `source`/`subfolder`/config.json (a hub id or a local folder)."""
    config = PixelUnshuffleCodec.load_config(str(source), subfolder=subfolder, **hub_kwargs(kwargs))
    return str(config.get("_class_name", "AutoencoderKL"))


def load_codec(source: str, subfolder: str = "vae", torch_dtype: torch.dtype | None = None, **kwargs):
    """The bundle's image codec: an `AutoencoderKL` (sd-x4, tiny) or a `PixelUnshuffleCodec`."""
    if codec_class_name(source, subfolder, **kwargs) == CODEC_CLASS:
        return PixelUnshuffleCodec.from_pretrained(source, subfolder=subfolder, torch_dtype=torch_dtype, **kwargs)
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(source, subfolder=subfolder, torch_dtype=torch_dtype, **kwargs)


def fresh_codec(vae: nn.Module) -> nn.Module:
    """A new codec of the same class and config as `vae` (weights not copied)."""
    if isinstance(vae, PixelUnshuffleCodec):
        return PixelUnshuffleCodec.from_config(vae.config)
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config(vae.config)


def latent_base(vae: nn.Module, lq: torch.Tensor | None, scaling: float) -> torch.Tensor | None:
    """The residual codec's base for low-res frames lq (B, 3, h, w) in [0, 1]: the scaled
    latent of their bicubic x4, (B, 3 s^2, h, w) float32; None for any other codec."""
    if not (isinstance(vae, PixelUnshuffleCodec) and vae.config.residual):
        return None
    if lq is None:
        raise ValueError("a residual codec encodes and decodes relative to the low-res frame: pass lq")
    s = vae.config.downscale
    up = F.interpolate(lq.float() * 2 - 1, scale_factor=s, mode="bicubic", align_corners=False).clamp(-1, 1)
    return F.pixel_unshuffle(up, s) * scaling


def downscale_factor(vae: nn.Module) -> int:
    """HR pixels per latent pixel along a side: 4 for the x4 upscaler's VAE and for the codec."""
    if isinstance(vae, PixelUnshuffleCodec):
        return int(vae.config.downscale)
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_channels(vae: nn.Module) -> int:
    if isinstance(vae, PixelUnshuffleCodec):
        return vae.latent_channels
    return int(vae.config.latent_channels)


def module_dtype(module: nn.Module) -> torch.dtype:
    """dtype of the first parameter, else of the first buffer (the codec has only a buffer)."""
    for t in module.parameters():
        return t.dtype
    for t in module.buffers():
        return t.dtype
    return torch.float32


def module_device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")

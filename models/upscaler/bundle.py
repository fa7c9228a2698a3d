"""The x4 upscaler's parts in the hub layout (`unet/ vae/ scheduler/ low_res_scheduler/`) plus
the one fixed prompt embedding: `UpscalerBundle.from_pretrained` / `save_pretrained`.

Text conditioning is one fixed prompt embedding (`prompt_embeds`), computed once from the
prompt with the CLIP text encoder (sd-x4) or a fixed seeded tensor saved with the model
(tiny): no text encoder runs per frame."""
from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

from models.pixel_codec import hub_kwargs, load_codec

PROMPT_EMBEDS_FILE = "prompt_embeds.safetensors"


@functools.lru_cache(maxsize=8)
def _encode_prompt_cached(source: str, prompt: str, hub_kwargs: tuple = ()) -> torch.Tensor:
    from transformers import CLIPTextModel, CLIPTokenizer

    kwargs = dict(hub_kwargs)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kwargs)
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kwargs).eval()
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0].float()                 # (1, 77, 1024) for sd-x4


X4_VAE_SCALING = 0.08333                     # the x4 upscaler's; StableDiffusionUpscalePipeline sets it too


def encode_prompt(source: str, prompt: str = "", **kwargs) -> torch.Tensor:
    """(1, L, D) CLIP embedding of `prompt` with the text encoder of `source` (run once, cached).
    `kwargs`: the hub options (`revision`, `local_files_only`, ...) the tokenizer and text
    encoder are loaded with, as the UNet and VAE are."""
    hub = tuple(sorted(hub_kwargs(kwargs).items()))
    return _encode_prompt_cached(str(source), prompt, hub).clone()


def _enforce_x4_vae_scaling(source: str, unet, vae, kwargs: dict) -> None:
    """A copy of the x4 upscaler (7-channel UNet) whose vae/config.json lacks scaling_factor
    would decode with diffusers' default 0.18215 (2.2x off): use the x4 value, as the pipeline."""
    if not isinstance(vae, AutoencoderKL) or unet.config.in_channels != 7:
        return
    raw = AutoencoderKL.load_config(source, subfolder="vae", **hub_kwargs(kwargs))
    if "scaling_factor" not in raw:
        vae.register_to_config(scaling_factor=X4_VAE_SCALING)


@dataclasses.dataclass
class UpscalerBundle:
    """The x4 upscaler's parts in the hub layout, plus the fixed prompt embedding."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL                       # or the lossless `PixelUnshuffleCodec` (small prior)
    scheduler: DDIMScheduler                 # training schedule + the teacher's default sampler
    low_res_scheduler: DDPMScheduler         # noise augmentation of the low-res input
    prompt_embeds: torch.Tensor              # (1, L, cross_attention_dim)
    prompt: str = ""
    negative_prompt_embeds: torch.Tensor | None = None   # (1, L, D) of negative_prompt; None: the same
    negative_prompt: str = ""                            # as prompt_embeds (guidance changes nothing)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, prompt: str = "", *, negative_prompt: str = "",
                        torch_dtype: torch.dtype | None = None, **kwargs) -> "UpscalerBundle":
        """Load `unet/`, `vae/`, `scheduler/`, `low_res_scheduler/` from a hub id or a directory.

        The prompt embedding comes from `prompt_embeds.safetensors` when the directory has
        one for the same prompt, else from the repository's CLIP text encoder (once).
        `kwargs` go to every `from_pretrained` (e.g. `local_files_only=True`, `revision`).
        """
        source = str(source)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=torch_dtype, **kwargs)
        vae = load_codec(source, subfolder="vae", torch_dtype=torch_dtype, **kwargs)
        _enforce_x4_vae_scaling(source, unet, vae, kwargs)
        scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler", **kwargs)
        low_res = DDPMScheduler.from_pretrained(source, subfolder="low_res_scheduler", **kwargs)
        embeds = _saved_embeds(source, {"prompt": prompt, "negative_prompt": negative_prompt})
        pos = embeds.get("prompt_embeds")
        pos = pos if pos is not None else encode_prompt(source, prompt, **kwargs)
        neg = None
        if negative_prompt != prompt:
            neg = embeds.get("negative_prompt_embeds")
            neg = neg if neg is not None else encode_prompt(source, negative_prompt, **kwargs)
        return cls(unet, vae, scheduler, low_res, pos.float(), prompt,
                   None if neg is None else neg.float(), negative_prompt)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the hub layout (+ `prompt_embeds.safetensors`); `from_pretrained` reads it back."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(out / "unet")
        self.vae.save_pretrained(out / "vae")
        self.scheduler.save_pretrained(out / "scheduler")
        self.low_res_scheduler.save_pretrained(out / "low_res_scheduler")
        tensors = {"prompt_embeds": self.prompt_embeds.detach().float().cpu().contiguous()}
        if self.negative_prompt_embeds is not None:
            tensors["negative_prompt_embeds"] = self.negative_prompt_embeds.detach().float().cpu().contiguous()
        save_file(tensors, str(out / PROMPT_EMBEDS_FILE),
                  metadata={"prompt": self.prompt, "negative_prompt": self.negative_prompt})
        return out


def _saved_embeds(source: str, want: dict[str, str]) -> dict[str, torch.Tensor]:
    """The embeddings in `source`/prompt_embeds.safetensors whose prompts match `want`
    ({"prompt": ..., "negative_prompt": ...}); a file written without a negative prompt
    counts as negative prompt ""."""
    local = Path(source) / PROMPT_EMBEDS_FILE
    if not local.is_file():
        return {}
    from safetensors import safe_open

    out = {}
    with safe_open(str(local), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("prompt", "") == want["prompt"]:
            out["prompt_embeds"] = f.get_tensor("prompt_embeds")
        if meta.get("negative_prompt", "") == want["negative_prompt"] and "negative_prompt_embeds" in f.keys():
            out["negative_prompt_embeds"] = f.get_tensor("negative_prompt_embeds")
    return out

"""Loading the real x4 upscaler safely: VAE scale, hub options, dtypes, worker environment,
and the distillation crop checked before any worker starts."""
from __future__ import annotations

import json

import pytest
import torch

from models.presets import build_random_bundle
from models.upscaler import bundle as B
from models.upscaler.config import UpscalerConfig
from models.upscaler.video import VideoUpscaler


def test_x4_copy_without_scaling_factor_gets_the_x4_value(tmp_path):
    bundle = build_random_bundle("tiny", seed=0)
    bundle.unet.register_to_config(in_channels=7)           # the x4 UNet reads [latent 4, low-res 3]
    bundle.save_pretrained(tmp_path / "x4")
    cfg_path = tmp_path / "x4" / "vae" / "config.json"
    raw = json.loads(cfg_path.read_text())
    raw.pop("scaling_factor")
    cfg_path.write_text(json.dumps(raw))
    loaded = B.UpscalerBundle.from_pretrained(tmp_path / "x4")
    assert loaded.vae.config.scaling_factor == B.X4_VAE_SCALING      # not diffusers' default 0.18215
    # a VAE that states its own factor keeps it (d2vr's tiny prior fits one)
    raw["scaling_factor"] = 0.5
    cfg_path.write_text(json.dumps(raw))
    assert B.UpscalerBundle.from_pretrained(tmp_path / "x4").vae.config.scaling_factor == 0.5


def test_prompt_encoder_gets_the_hub_options(monkeypatch):
    seen = {}

    class Fake:
        model_max_length = 4

        @classmethod
        def from_pretrained(cls, source, **kwargs):
            seen.setdefault(cls.__name__, kwargs)
            return cls()

        def eval(self):
            return self

        def __call__(self, *args, **kwargs):
            if args and isinstance(args[0], str):
                return type("T", (), {"input_ids": torch.zeros(1, 4, dtype=torch.long)})()
            return (torch.zeros(1, 4, 8),)

    class CLIPTokenizer(Fake):
        pass

    class CLIPTextModel(Fake):
        pass

    import transformers

    monkeypatch.setattr(transformers, "CLIPTokenizer", CLIPTokenizer)
    monkeypatch.setattr(transformers, "CLIPTextModel", CLIPTextModel)
    B._encode_prompt_cached.cache_clear()
    out = B.encode_prompt("some/repo", "a photo", revision="abc", local_files_only=True, torch_dtype=None)
    assert out.shape == (1, 4, 8)
    for name in ("CLIPTokenizer", "CLIPTextModel"):
        assert seen[name] == {"subfolder": seen[name]["subfolder"], "revision": "abc", "local_files_only": True}
    B._encode_prompt_cached.cache_clear()


def test_vae_stays_float32_unless_asked():
    up = VideoUpscaler(build_random_bundle("tiny", seed=0), UpscalerConfig(pretrained="tiny"),
                         dtype=torch.bfloat16)
    assert up.dtype == torch.bfloat16 and up.vae_dtype == torch.float32


def test_workers_get_credentials_and_model_caches():
    from pipelines.common.storage import worker_env

    env = worker_env({"AWS_ACCESS_KEY_ID": "k", "HF_TOKEN": "t", "HF_HOME": "/h", "HF_ENDPOINT": "http://m",
                      "TORCH_HOME": "/th", "HOME": "/root", "PATH": "/bin"})
    assert env == {"AWS_ACCESS_KEY_ID": "k", "HF_TOKEN": "t", "HF_HOME": "/h", "HF_ENDPOINT": "http://m",
                   "TORCH_HOME": "/th"}


@pytest.mark.parametrize("crop, degrade, message", [(32, "heavy", "too small for the final sinc"),
                                                    (30, "light", "multiple of 4"),
                                                    (64, "bogus", "--degrade 'bogus'")])
def test_distill_crop_is_checked_against_the_preset_before_ray(crop, degrade, message, tmp_path):
    from pipelines.common import cli
    from pipelines.train.distill import DistillTrainConfig, check_config

    cfg = cli.build(DistillTrainConfig, crop=crop, degrade=degrade, teacher="tiny", flow="none",
                    shards=str(tmp_path), tlpips_backbone="random")
    with pytest.raises(ValueError, match=message):
        check_config(cfg)
    check_config(cli.build(DistillTrainConfig, crop=64, degrade="heavy", teacher="tiny", flow="none",
                           shards=str(tmp_path), tlpips_backbone="random"))

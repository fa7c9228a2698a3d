"""jobs/train_prior.py's path: Ray Train + DeepSpeed ZeRO-2 on 2 CPU workers, both stages
(VAE, then UNet + decoder) on frames from the shard loader, export loadable."""
from __future__ import annotations

import uuid

import pytest
import torch

from pipelines.train import prior as tp


@pytest.mark.slow
def test_two_workers_zero2_both_stages_export(ray_local, training_shards, tmp_path):
    from models.upscaler.bundle import UpscalerBundle

    out = tmp_path / "prior"
    cfg = tp.PriorTrainConfig(
        run_name=f"prior-{uuid.uuid4().hex[:8]}", storage_path=str(tmp_path / "ray"), num_workers=2,
        zero_stage=2, shards=training_shards, out=str(out), init="tiny", steps=3, vae_steps=1, batch_size=2,
        patch=64, vae_crop=32, degrade="light", scale_batches=1, checkpoint_every=3, report_every=1,
        loader_workers=0)
    summary = tp.train_prior(cfg)

    assert summary["steps"] == 3 and summary["vae_steps"] == 1 and summary["resumed_from"] == 0
    assert summary["unet_loss"] == summary["unet_loss"] and summary["unet_loss"] > 0   # ran, not NaN
    bundle = UpscalerBundle.from_pretrained(out)
    # the scaling factor fitted after the VAE stage (on both workers' frames) is exported
    assert bundle.vae.config.scaling_factor == summary["scaling"] != 0.08333
    assert list(bundle.vae.config.block_out_channels) == list(tp.tiny_prior_vae_config()["block_out_channels"])
    assert all(torch.isfinite(p).all() for p in bundle.unet.parameters())

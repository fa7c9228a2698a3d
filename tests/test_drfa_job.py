"""jobs/pretrain_drfa.py end to end: Ray Train + DeepSpeed ZeRO-2 on 2 CPU workers,
a worker killed once mid-run, resumed from its checkpoint, weights exported."""
from __future__ import annotations

import uuid

import pytest
import torch

from pipelines.train.drfa import DRFATrainConfig, pretrain_drfa


@pytest.mark.slow
def test_pretrain_drfa_survives_a_worker_death_and_exports(ray_local, training_shards, tmp_path):
    from models.flow import flow_preset, load

    cfg = DRFATrainConfig(
        shards=training_shards, out=str(tmp_path / "export"), storage_path=str(tmp_path / "ray"),
        run_name=f"drfa-{uuid.uuid4().hex[:8]}", num_workers=2, zero_stage=2,
        steps=8, checkpoint_every=3, report_every=2, fail_at_step=5,
        batch_size=2, crop=64, loader_workers=0, degrade="medium")
    summary = pretrain_drfa(cfg)
    assert summary["steps"] == 8
    assert summary["resumed_from"] == 3, summary  # the attempt after the death started at step 3

    model = load(summary["export"])
    assert model.config == flow_preset("tiny", "drfa")
    img = torch.rand(1, 3, 64, 64)
    out = model.eval()(img, img, iters=2)
    assert out.flows[-1].shape == (1, 2, 64, 64) and out.confidence is not None

    # Started again with the same run name, it resumes from its last checkpoint instead
    # of training from scratch: asking for 10 steps runs only the 2 missing ones.
    again = pretrain_drfa(DRFATrainConfig(**{**cfg.__dict__, "steps": 10, "fail_at_step": -1}))
    assert again["steps"] == 10 and again["resumed_from"] == 8, again


@pytest.mark.slow
def test_pretrain_drfa_runs_in_bf16_on_cpu(ray_local, training_shards, tmp_path):
    """The cluster path's precision (DeepSpeed bf16: the flow net's weights cast to bf16) on the
    CPU: it used to fail at step 1 (a bf16 bias met fp32 features in the update block)."""
    from models.flow import load

    cfg = DRFATrainConfig(
        shards=training_shards, out=str(tmp_path / "export"), storage_path=str(tmp_path / "ray"),
        run_name=f"drfa-bf16-{uuid.uuid4().hex[:8]}", num_workers=1, steps=3, checkpoint_every=3, report_every=1,
        batch_size=2, crop=64, loader_workers=0, degrade="medium",
        deepspeed_config="configs/deepspeed_zero2_bf16.json")
    summary = pretrain_drfa(cfg)
    assert summary["steps"] == 3 and summary["loss"] == summary["loss"] and summary["loss"] < 1e4   # finite
    model = load(summary["export"])
    assert next(model.parameters()).dtype == torch.float32      # the export is fp32 whatever trained it

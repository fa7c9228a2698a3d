"""pipelines/train/common.py: the DeepSpeed settings every training job shares."""
from __future__ import annotations

import pytest
import torch

from pipelines.train import common as tc


@pytest.mark.skipif(torch.cuda.is_available(), reason="the shm op is only skipped on CPU-only machines")
def test_cpu_training_does_not_compile_deepspeeds_shm_op():
    # DeepSpeed's torch backend calls build_shm_op() when it wraps the process group;
    # on a fresh CPU machine that JIT-compiles C++ for about a minute. After the skip it
    # must return None without building anything.
    import importlib

    ds_torch_backend = importlib.import_module("deepspeed.comm.torch")  # (`from deepspeed.comm import torch` is torch)

    tc.skip_cpu_shm_comm_op()
    assert ds_torch_backend.build_shm_op() is None


def test_deepspeed_config_resolves_for_cpu():
    cfg = tc.load_deepspeed_config("configs/deepspeed_zero2.json", micro_batch=3, use_gpu=False,
                                   zero_stage=3, grad_clip=0.5)
    assert cfg["train_micro_batch_size_per_gpu"] == 3
    assert cfg["zero_optimization"]["stage"] == 3
    assert cfg["gradient_clipping"] == 0.5
    assert "train_batch_size" not in cfg
    assert not cfg.get("bf16", {}).get("enabled", False)  # CPU trains in fp32

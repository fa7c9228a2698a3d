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


def test_weight_ema_matches_torch_averaged_model():
    """WeightEMA follows torch.optim.swa_utils' EMA rule step for step (buffers included),
    and its state round-trips."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from pipelines.train.ema import WeightEMA

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    ours = WeightEMA(net, 0.9)
    ref = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    ref.update_parameters(net)                             # its first update copies: both start at the weights
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        net(torch.randn(16, 4)).pow(2).mean().backward()
        opt.step()
        ours.update(net)
        ref.update_parameters(net)
    theirs = ref.module.state_dict()
    got = ours.state_dict()
    moved = max((got[k] - v).abs().max().item() for k, v in net.state_dict().items() if v.is_floating_point())
    assert moved > 1e-3                                    # the average lags the weights
    for k, v in theirs.items():
        if v.is_floating_point():
            assert torch.allclose(got[k], v, atol=1e-6), k
        else:                                              # counters are copied, not averaged
            assert torch.equal(got[k], net.state_dict()[k]), k
    again = WeightEMA(net, 0.9)
    again.load_state_dict(got)
    assert all(torch.equal(again.state_dict()[k], got[k]) for k in got)
    with pytest.raises(ValueError, match="--ema-decay"):
        WeightEMA(net, 1.0)


def test_absolute_paths_fixes_relative_local_inputs_for_ray_workers(tmp_path, monkeypatch):
    """Ray Train workers run in another directory: a relative local --teacher / --shards must
    reach them absolute, while hub ids, s3:// and "samples:..." stay as given."""
    from models.upscaler.config import UpscalerConfig
    from pipelines.train.distill import DistillTrainConfig

    (tmp_path / "prior" / "unet").mkdir(parents=True)
    (tmp_path / "shards").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = DistillTrainConfig(upscaler=UpscalerConfig(pretrained="prior"), shards="shards",
                             flow="s3://bucket/drfa.safetensors", student_init="")
    got = tc.absolute_paths(cfg, "shards", "flow", "student_init", "upscaler.pretrained")
    assert got.upscaler.pretrained == str(tmp_path / "prior") and got.shards == str(tmp_path / "shards")
    assert got.flow == "s3://bucket/drfa.safetensors" and got.student_init == ""
    hub = DistillTrainConfig(upscaler=UpscalerConfig(pretrained="stabilityai/stable-diffusion-x4-upscaler"))
    assert tc.absolute_paths(hub, "upscaler.pretrained").upscaler.pretrained == \
        "stabilityai/stable-diffusion-x4-upscaler"

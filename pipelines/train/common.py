"""What every d2vr training job shares: DeepSpeed inside Ray Train, checkpoints, resume.

The jobs (`pretrain_drfa`, `train_prior`, `distill`) each define a plain step function
(testable without Ray) and a `train_loop_per_worker`; this module holds the Ray- and
DeepSpeed-specific lines they have in common, kept apart from the maths:

- `load_deepspeed_config`: the JSON under `configs/`, with micro-batch, clipping and
  precision resolved for the device (bf16 on GPU when "auto", fp32 on CPU).
- `init_engine`: `deepspeed.initialize` with a torch optimizer we pass in (DeepSpeed
  would otherwise JIT-compile its CPU Adam) and `dist_init_required=False` (Ray Train
  already set up the process group: gloo on CPU, nccl on GPU). On CPU it also tells
  DeepSpeed not to JIT-compile its shared-memory all-reduce op (`skip_cpu_shm_comm_op`).
- `save_checkpoint` / `latest_checkpoint_dir`: DeepSpeed state (all ranks) plus
  safetensors weights and a JSON of the step (rank 0) in one directory, reported to Ray
  Train so that a worker failure restarts from it, and also findable by a fresh run with
  the same run name.
- `run`: builds the `TorchTrainer` with `FailureConfig`, the storage path (local or
  s3://) and the run name, and returns the result.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Callable

import torch

from pipelines.common.paths import REPO_ROOT


@dataclasses.dataclass(frozen=True)
class TrainRunConfig:
    run_name: str = "run"                      # a re-run with the same name resumes
    storage_path: str = "runs/ray"             # Ray Train storage: local dir or s3://bucket/prefix
    num_workers: int = 2                       # Ray Train workers (one per GPU on a cluster)
    use_gpu: bool = False                      # GPU workers (nccl) instead of CPU (gloo)
    deepspeed_config: str = "configs/deepspeed_zero2.json"  # ZeRO stage, precision, micro-batch
    zero_stage: int = -1                       # -1: keep the config file's stage
    max_failures: int = 1                      # worker failures tolerated before giving up
    keep_checkpoints: int = 3                  # newest checkpoints kept in storage (older ones deleted)
    checkpoint_every: int = 50                 # steps between checkpoints
    report_every: int = 10                     # steps between metric reports
    fail_at_step: int = -1                     # fault injection (tests): rank 0 dies once here


def load_deepspeed_config(path: str, micro_batch: int, use_gpu: bool, zero_stage: int = -1,
                          grad_clip: float | None = None) -> dict:
    """Read a DeepSpeed JSON and resolve it for this device."""
    full = path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)
    with open(full) as f:
        cfg = json.load(f)
    cfg["train_micro_batch_size_per_gpu"] = int(micro_batch)
    cfg.setdefault("gradient_accumulation_steps", 1)
    cfg.pop("train_batch_size", None)  # derived by DeepSpeed from micro-batch x world
    if grad_clip is not None:
        cfg["gradient_clipping"] = float(grad_clip)
    if zero_stage >= 0:
        cfg.setdefault("zero_optimization", {})["stage"] = int(zero_stage)
    for key in ("bf16", "fp16"):
        block = cfg.get(key, {})
        if block.get("enabled") == "auto":
            # bf16 only where the hardware has it; CPU training runs in fp32.
            block["enabled"] = bool(use_gpu and key == "bf16" and torch.cuda.is_available()
                                    and torch.cuda.is_bf16_supported())
    return cfg


def skip_cpu_shm_comm_op() -> None:
    """On a CPU-only machine, stop DeepSpeed compiling its shared-memory all-reduce op.

    DeepSpeed's torch backend builds `deepspeed_shm_comm` (C++, via ninja) whenever the
    accelerator is the CPU: ~50-75 s on a fresh 2-core machine, once per cache. Only
    `inference_all_reduce` (DeepSpeed inference / AutoTP) uses it; training collectives go
    through torch.distributed (gloo), so marking the op incompatible changes nothing we run.
    DeepSpeed keeps its probe result in one dict (`deepspeed.ops.__compatible_ops__`) for
    exactly such edits. No-op where CUDA is available.
    """
    if torch.cuda.is_available():
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_engine(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ds_config: dict,
                lr_scheduler=None):
    import deepspeed

    skip_cpu_shm_comm_op()
    engine, optimizer, _, lr_scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, config=ds_config,
        dist_init_required=False,
    )
    return engine, optimizer, lr_scheduler


def engine_dtype(engine) -> torch.dtype:
    return torch.bfloat16 if engine.bfloat16_enabled() else torch.float32


def state_dict_for_export(engine) -> dict[str, torch.Tensor]:
    """Full fp32 weights on CPU, also under ZeRO-3 (gathered on every rank)."""
    module = engine.module
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def save_checkpoint(engines: dict[str, Any], step: int, metrics: dict, export: Callable[[str], None] | None = None,
                    extra_state: dict | None = None) -> None:
    """Save DeepSpeed state of every engine (every rank must call this), rank 0's export
    (safetensors weights) and the step, then report them to Ray Train in one checkpoint."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    tmp = tempfile.mkdtemp(prefix=f"ckpt-{step}-")
    try:
        for name, engine in engines.items():
            if hasattr(engine, "save_checkpoint"):
                engine.save_checkpoint(os.path.join(tmp, name), tag="state")
            elif rank == 0:  # a plain module/optimizer pair outside DeepSpeed
                torch.save(engine.state_dict(), os.path.join(tmp, f"{name}.pt"))
        if rank == 0:
            if export is not None:
                export(os.path.join(tmp, "export"))
            with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
                json.dump({"step": step, **(extra_state or {})}, f)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def restore_checkpoint(engines: dict[str, Any]) -> dict:
    """Load the checkpoint Ray Train hands this attempt (after a failure, or when a run
    with the same name is started again). Returns the saved trainer state ({} if none)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as folder:
        for name, engine in engines.items():
            if hasattr(engine, "load_checkpoint"):
                engine.load_checkpoint(os.path.join(folder, name), tag="state")
            else:
                engine.load_state_dict(torch.load(os.path.join(folder, f"{name}.pt"), weights_only=True))
        with open(os.path.join(folder, "trainer_state.json")) as f:
            return json.load(f)


def maybe_inject_failure(run: TrainRunConfig, step: int) -> None:
    """Kill rank 0 once at `run.fail_at_step` (tests of resume after a worker dies).

    A marker file (local temp dir, per run name) makes it happen only on the first attempt."""
    import ray.train

    if run.fail_at_step < 0 or step != run.fail_at_step:
        return
    if ray.train.get_context().get_world_rank() != 0:
        return
    marker_dir = os.path.join(tempfile.gettempdir(), "d2vr-fault-injection")
    marker = os.path.join(marker_dir, f"{run.run_name}-{step}")
    if os.path.exists(marker):
        return
    os.makedirs(marker_dir, exist_ok=True)
    open(marker, "w").close()
    # Ray Train registers reported checkpoints asynchronously; dying a moment later (as a
    # real node loss would, long after its last checkpoint) lets the test check the resume
    # rather than race the registration.
    time.sleep(3)
    os._exit(1)  # a hard worker death, as a lost node would be


def _storage_filesystem(storage_path: str):
    """pyarrow filesystem for an s3:// storage path with a custom endpoint."""
    if not storage_path.startswith("s3://"):
        return None, os.path.abspath(storage_path)
    import pyarrow.fs as pafs
    import s3fs

    from pipelines.common import storage

    fs, _ = storage.filesystem(storage_path)
    assert isinstance(fs, s3fs.S3FileSystem)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), storage_path[len("s3://"):]


def run(train_loop: Callable[[dict], None], loop_config: dict, run: TrainRunConfig):
    """Run `train_loop` on `run.num_workers` Ray Train workers with DeepSpeed."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        from pipelines.common import storage

        ray.init(runtime_env={"env_vars": storage.worker_env()})
    # Ray Train V2 reroutes print() on workers into its logger and, where stdout is
    # wrapped (as in Ray workers), also prints it: every progress line came out twice.
    # Plain print() it is; the driver passes this variable on to the workers.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    filesystem, path = _storage_filesystem(run.storage_path)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=run.num_workers, use_gpu=run.use_gpu),
        torch_config=TorchConfig(backend="nccl" if run.use_gpu else "gloo"),
        run_config=RunConfig(name=run.run_name, storage_path=path, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=run.keep_checkpoints)),
    )
    return trainer.fit()


def absolute_paths(cfg, *fields: str):
    """`cfg` with each named field that is a relative path to a local file or folder made
    absolute (Ray Train runs its workers in another working directory, where a relative
    `--teacher assets/small-prior` would not exist and would be taken for a hub id). A dotted
    name reaches into a nested config ("upscaler.pretrained"); s3://, hub ids and missing paths
    are left as given."""
    changes: dict = {}
    for name in fields:
        head, _, rest = name.partition(".")
        value = getattr(cfg, head)
        if rest:
            changes[head] = absolute_paths(value, rest)
        elif isinstance(value, str) and value and not os.path.isabs(value) and "://" not in value \
                and os.path.exists(value):
            changes[head] = os.path.abspath(value)
    return dataclasses.replace(cfg, **changes)


def lr_multiplier(progress: float, warmup: float, final: float) -> float:
    """Linear warm-up over `warmup` of the stage, then cosine from 1 to `final`."""
    p = min(max(progress, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return (p + 1e-3) / warmup
    q = (p - warmup) / max(1e-8, 1 - warmup)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * q))


def set_lr(optimizer, multiplier: float, frozen: tuple[str, ...] = ()) -> float:
    """Set every param group to base_lr * multiplier (0 for groups named in `frozen`)."""
    for group in optimizer.param_groups:
        group["lr"] = 0.0 if group.get("name") in frozen else group["base_lr"] * multiplier
    return optimizer.param_groups[-1]["lr"]


class PlainEngine:
    """The part of a DeepSpeed engine that the training steps use (`engine(...)`,
    `backward(loss)`, `step()`), over a module + torch optimizer (+ an optional lr scheduler
    stepped after each optimizer step): the one stand-in for tests and single-process
    benchmarks, no Ray. `grad_clip` 0 = no clipping."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float = 1.0,
                 scheduler=None):
        self.module, self.optimizer, self.grad_clip, self.scheduler = module, optimizer, grad_clip, scheduler

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def parameters(self):
        return self.module.parameters()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

"""DRFA pretraining on degraded synthetic flow pairs, with Ray Train + DeepSpeed.

Read top to bottom:
  1. `DRFATrainConfig` - every option, a CLI flag of `jobs/pretrain_drfa.py`.
  2. `drfa_step`       - one optimisation step's maths (RAFT sequence loss), no Ray.
  3. `train_loop_per_worker` - what each Ray Train worker runs: model, DeepSpeed engine,
                         resume, the flow-pair loader for its rank, metrics, checkpoints.
  4. `pretrain_drfa`   - the driver: runs the trainer, exports `drfa.safetensors`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import torch

from pipelines.common import storage
from pipelines.train import common as tc


@dataclasses.dataclass(frozen=True)
class DRFATrainConfig(tc.TrainRunConfig):
    shards: str = "runs/demo/shards"      # WebDataset shards from jobs/build_shards.py (local or s3://)
    out: str = "runs/demo/drfa"           # export folder: drfa.safetensors + drfa.json
    preset: str = "tiny"                  # flow network size: tiny (CPU) or full (GMA's published)
    variant: str = "drfa"                 # drfa | gma | raft (the ablation switches)
    steps: int = 200                      # optimizer steps
    lr: float = 4e-4                      # one-cycle peak learning rate (RAFT: 4e-4 on Sintel-size data)
    weight_decay: float = 1e-4            # AdamW weight decay (RAFT: 1e-4..1e-5)
    pct_start: float = 0.05               # share of steps warming up in the one-cycle schedule (RAFT)
    gamma: float = 0.8                    # sequence-loss decay over iterations (RAFT)
    grad_clip: float = 1.0                # gradient norm clip (RAFT: 1.0)
    iters: int = -1                       # refinement iterations while training; -1: preset's
    batch_size: int = 4                   # flow pairs per worker per step (DeepSpeed micro-batch)
    crop: int = 96                        # training crop (pixels, square)
    max_flow: float = 24.0                # largest synthetic displacement (pixels)
    degrade: str = "heavy"                # degradation preset applied to both frames of a pair
    loader_workers: int = 1               # DataLoader worker processes per Ray worker
    seed: int = 0                         # model init and data order


def drfa_step(engine, batch: dict, gamma: float, iters: int | None) -> tuple[torch.Tensor, dict]:
    """Forward + RAFT sequence loss + backward + step. `engine` is a DeepSpeed engine (or
    anything with `__call__`, `backward(loss)` and `step()`)."""
    from models.flow import sequence_loss

    out = engine(batch["img1"], batch["img2"], iters=iters)
    loss, metrics = sequence_loss(out.flows, batch["flow"], batch["valid"], gamma=gamma)
    engine.backward(loss)
    engine.step()
    return loss.detach(), {"loss": float(loss.item()), **metrics}


def _export(weights: dict, flow_cfg, folder: str) -> str:
    from models.flow import build, save

    model = build(flow_cfg)
    model.load_state_dict(weights)
    os.makedirs(folder, exist_ok=True)
    return str(save(model, os.path.join(folder, "drfa.safetensors")))


def _loader_epochs(cfg: DRFATrainConfig, rank: int, world: int, start_epoch: int):
    from pipelines.data.loaders import LoaderConfig, epochs, make_flow_loader

    lcfg = LoaderConfig(batch_size=cfg.batch_size, num_workers=cfg.loader_workers, seed=cfg.seed,
                        crop=cfg.crop, degrade=cfg.degrade, max_flow=cfg.max_flow)
    return epochs(make_flow_loader, cfg.shards, lcfg, rank, world, start_epoch, what="flow pairs")


def train_loop_per_worker(config: dict) -> None:
    import ray.train

    from models.flow import build, flow_preset

    cfg = DRFATrainConfig(**config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    flow_cfg = flow_preset(cfg.preset, cfg.variant)
    model = build(flow_cfg)

    # 1. Optimizer and one-cycle schedule (RAFT's recipe), DeepSpeed engine.
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, eps=1e-8)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.steps + 1, pct_start=cfg.pct_start,
        cycle_momentum=False, anneal_strategy="linear")
    ds_config = tc.load_deepspeed_config(cfg.deepspeed_config, cfg.batch_size, cfg.use_gpu,
                                         cfg.zero_stage, grad_clip=cfg.grad_clip)
    engine, _, _ = tc.init_engine(model, optimizer, ds_config, lr_scheduler=schedule)

    # 2. Resume: after a worker failure, or a new run with the same name.
    state = tc.restore_checkpoint({"drfa": engine})
    step, epoch = int(state.get("step", 0)), int(state.get("epoch", 0))
    resumed_from = step
    # A run restarted with more --steps keeps its schedule's position but stretches its
    # end (the restored scheduler state carries the old total).
    schedule.total_steps = max(schedule.total_steps, cfg.steps + 1)
    if step and rank == 0:
        print(f"[pretrain_drfa] resumed at step {step}", flush=True)

    # 3. Train.
    iters = cfg.iters if cfg.iters > 0 else None
    dtype = tc.engine_dtype(engine)
    t0, metrics = time.time(), {}
    data = _loader_epochs(cfg, rank, world, epoch)
    while step < cfg.steps:
        epoch, batch = next(data)
        # images in the engine's dtype; the ground-truth flow and mask stay float32 (targets)
        batch = {k: v.to(engine.device, dtype if k in ("img1", "img2") else v.dtype)
                 for k, v in batch.items() if torch.is_tensor(v)}
        _, metrics = drfa_step(engine, batch, cfg.gamma, iters)
        step += 1
        tc.maybe_inject_failure(cfg, step)
        pairs_per_s = (step - resumed_from) * cfg.batch_size * world / (time.time() - t0)
        metrics.update(step=step, epoch=epoch, resumed_from=resumed_from, lr=engine.get_lr()[0],
                       pairs_per_s=pairs_per_s)
        last = step == cfg.steps
        if step % cfg.checkpoint_every == 0 or last:
            weights = tc.state_dict_for_export(engine)  # collective under ZeRO-3: every rank
            tc.save_checkpoint({"drfa": engine}, step, metrics,
                               export=lambda d: _export(weights, flow_cfg, d),
                               extra_state={"epoch": epoch})
        elif step % cfg.report_every == 0:
            ray.train.report(metrics)
        if rank == 0 and (step % cfg.report_every == 0 or last):
            print(f"[pretrain_drfa] step {step}/{cfg.steps} loss {metrics['loss']:.3f} "
                  f"epe {metrics['epe']:.3f} 1px {metrics['1px']:.3f} lr {metrics['lr']:.2e}", flush=True)


def pretrain_drfa(cfg: DRFATrainConfig) -> dict:
    """Run the trainer; export the final weights to `cfg.out`. Returns a summary."""
    t0 = time.time()
    cfg = tc.absolute_paths(cfg, "shards")
    loop_config = dataclasses.asdict(cfg)
    result = tc.run(train_loop_per_worker, loop_config, cfg)
    if result.error:
        raise RuntimeError(f"DRFA pretraining failed: {result.error}")
    with result.checkpoint.as_directory() as folder:
        exported = os.path.join(folder, "export")
        storage.upload_tree(exported, cfg.out)
    summary = {"steps": result.metrics.get("step"), "resumed_from": result.metrics.get("resumed_from"),
               "epe": result.metrics.get("epe"),
               "loss": result.metrics.get("loss"), "export": storage.join(cfg.out, "drfa.safetensors"),
               "seconds": round(time.time() - t0, 1)}
    print(f"[pretrain_drfa] done: {json.dumps(summary)}", flush=True)
    return summary

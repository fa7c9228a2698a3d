"""Efficient adversarial distillation (paper Sec. 2.3, 3.1) with Ray Train + DeepSpeed.

Read top to bottom:
  1. `DistillTrainConfig` - every option, a CLI flag of `jobs/distill.py`; the paper's values
                           are the defaults (Adam 2e-5, batch 8, 5000 steps, lambda1 0.05,
                           lambda2 0.1, T_student 750/500/250/0, one GPU).
  2. `build_models`      - teacher bundle (frozen), frozen DRFA, student, discriminator, T-LPIPS.
  3. `distill_step`      - one alternating step, no Ray: generator (student) update, then
                           discriminator update on the generator step's (detached) samples.
  4. `train_loop_per_worker` - each Ray Train worker: two DeepSpeed engines, resume, the
                           distillation loader for its rank, metrics, checkpoints.
  5. the export: `pipelines.model_folder.save` writes the restorable model folder.
  6. `distill`           - the driver: runs the trainer, copies the final export to --out.

Engines: the student and the discriminator each get a DeepSpeed engine with the same
config (`configs/deepspeed_distill.json`: ZeRO-2, bf16 on GPU, fp32 on CPU) and a torch
Adam. Why not D with a plain torch optimizer and a hand-written all-reduce: D is a
trainable copy of the prior UNet's encoder (203 M of the sd-x4 UNet's 473 M parameters), so
its fp32 master weights and Adam moments (~2.4 GB) are worth sharding like the student's,
and its bf16/fp32-master handling, gradient clipping, all-reduce and checkpointing would
otherwise be a second, hand-written copy of what DeepSpeed already does for the student.
DeepSpeed issue #4923 (two ZeRO-2 engines break when the generator's loss backpropagates
through the discriminator's engine) cannot happen here, because each backward only ever
reaches its own engine's parameters and hooks:
- generator step: D runs as the raw module (`d_engine.module`) with *detached* parameters
  (`torch.func.functional_call`, `train_distill_step`): no D parameter and no D-engine
  forward hook is in the generator's graph;
- discriminator step: D reads the generator step's student latents, detached, so the
  student engine's gradient hooks never fire in D's backward;
- every forward of a trained network goes through its engine (`up.student` *is* the
  student engine; the D step calls `d_engine`): DeepSpeed's forward clears the previous
  step's ZeRO gradient state and hooks its backward prologue, which calling the raw module
  would skip. Teacher, VAE and DRFA are frozen modules outside DeepSpeed.
ZeRO-3 is refused: the generator step reads D's parameters directly, which ZeRO-3
partitions. Tested (tests/test_distill_job.py): 2 CPU workers (gloo), both engines ZeRO-2:
after 2 steps both networks' weights equal a one-process emulation (plain Adam, each rank's
batch and noise, gradients averaged) -- bit for bit on this machine; a killed worker resumes.
Without the raw-module rule above the first generator backward fails inside D's engine
(`reduce_ipg_grads`: IndexError), the #4923 failure.

Checkpoint (every `checkpoint_every` steps and at the end; Ray Train storage, local or
s3://): `student/` + `discriminator/` DeepSpeed state (every rank's ZeRO partition),
`export/` (below; rank 0; its student is the weights' EMA with `--ema-decay`), `student_ema.pt`
(with `--ema-decay`), `trainer_state.json` (step, epoch). A killed worker restarts
the group from the last checkpoint; a new run with the same --run-name resumes from the
latest one (with a larger --steps it trains on). A resumed run starts the next data epoch
(new shuffle, new degradations) rather than replaying the interrupted one.

Export folder (`--out`; the final checkpoint's `export/`): ONE folder is a complete
restorable model in the layout of `pipelines/model_folder.py` (written by
`model_folder.save`, read by `model_folder.load` and `jobs/restore.py --model PATH`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from models.upscaler.config import UpscalerConfig
from pipelines import model_folder
from pipelines.common import cli, storage
from pipelines.common.devices import parse_dtype
from pipelines.train import common as tc
from pipelines.train.distill_step import DistillConfig
from pipelines.train.ema import WeightEMA

BUILTIN_TEACHERS = ("small", "tiny", "sd-x4-random")


@dataclasses.dataclass(frozen=True)
class DistillTrainConfig(tc.TrainRunConfig):
    # --- run (TrainRunConfig fields with the distillation's defaults)
    num_workers: int = 1                   # Ray Train workers; the paper trains on one A100
    deepspeed_config: str = "configs/deepspeed_distill.json"  # ZeRO-2 for both engines, bf16 on GPU
    checkpoint_every: int = 250            # steps between checkpoints (each holds both engines' state)
    report_every: int = 10                 # steps between metric reports
    # --- data and models
    shards: str = "runs/demo/shards"       # WebDataset clip shards from jobs/build_shards.py (local or s3://)
    flow: str = "runs/demo/drfa/drfa.safetensors"  # DRFA export (jobs/pretrain_drfa.py), frozen; "none": zero flow
    out: str = "runs/demo/model"           # export folder: one complete restorable model (see module doc)
    model_seed: int = 0                    # weights of a built-in teacher ("tiny")
    # a student to start from: a model folder (a jobs/distill.py export) or its student/ folder, of
    # the same architecture as --teacher's; empty = a copy of the prior with zero temporal weights (the paper's)
    student_init: str = ""
    # the upscaler (stored in the export's restorer.json): the frozen prior (`pretrained`, the flag
    # --teacher), prompt, guidance, noise level, T_student, temporal encoding; each field a flag
    upscaler: UpscalerConfig = dataclasses.field(default_factory=UpscalerConfig,
                                                 metadata={"flags": {"pretrained": "teacher"}})
    vae_dtype: str = "float32"             # the x4 VAE overflows in half precision: fp32 on GPU too
    # --- the paper's recipe (Sec. 3.1)
    steps: int = 5000                      # optimizer steps of each of G and D (paper: 5000)
    batch_size: int = 8                    # clips per step over all workers (paper: 8); a multiple of num_workers
    lr: float = 2e-5                       # student Adam learning rate, fixed (paper: 2e-5)
    d_lr: float = 2e-5                     # discriminator Adam learning rate, fixed (paper: one Adam at 2e-5)
    adam_beta1: float = 0.9                # Adam betas (the paper names Adam only: torch's defaults)
    adam_beta2: float = 0.999              # (torch's default, as beta1)
    grad_clip: float = 0.0                 # gradient-norm clip of both engines; 0 = none (the paper names none)
    # decay of an EMA of the student's weights, exported instead of the last step's; 0 = off (the paper
    # names none; with a few hundred small-batch steps on CPU the raw weights random-walk)
    ema_decay: float = 0.0
    # the losses (Eq. 6) and the student's training inputs; each field a flag (--lambda-adv ...)
    loss: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    d_head_channels: int = 0               # D head width; 0 = min(128, the prior's first block width)
    d_train_encoder: bool = True           # False: D trains its heads only, its encoder stays the prior's (LADD)
    gradient_checkpointing: bool = False   # recompute the student's block activations in backward (less memory)
    tlpips_net: str = "alex"               # T-LPIPS feature net: alex | vgg
    tlpips_backbone: str = "pretrained"    # pretrained (ImageNet, local torch hub cache) | random (tests only)
    # --- clips (not in the paper)
    crop: int = 256                        # HQ crop side in px (LQ = crop / 4; the sd-x4 UNet needs LQ % 8 == 0)
    clip_len: int = 3                      # frames per clip (>= 2 for T-LPIPS); each adds a grad UNet + VAE decode
    degrade: str = "heavy"                 # degradation preset applied on the fly (clean | light | medium | heavy)
    loader_workers: int = 2                # DataLoader worker processes per Ray worker
    seed: int = 0                          # data order, degradations, training noise, D's heads

    @property
    def teacher(self) -> str:
        """The frozen prior (--teacher): `upscaler.pretrained`."""
        return self.upscaler.pretrained


# --------------------------------------------------------------------------- validation


def check_config(cfg: DistillTrainConfig) -> None:
    """Fail fast, in the driver, with the flag and the reason (ValueError)."""
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.num_workers < 1:
        raise ValueError(f"--steps {cfg.steps}, --batch-size {cfg.batch_size} and --num-workers "
                         f"{cfg.num_workers} must be >= 1")
    if cfg.batch_size % cfg.num_workers:
        raise ValueError(f"--batch-size {cfg.batch_size} (clips per step over all workers) must be a "
                         f"multiple of --num-workers {cfg.num_workers}")
    if cfg.loss.lambda_tlpips > 0 and cfg.clip_len < 2:
        raise ValueError(f"--clip-len {cfg.clip_len}: T-LPIPS (--lambda-tlpips {cfg.loss.lambda_tlpips}) needs >= 2 frames")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"--ema-decay {cfg.ema_decay}: must be in [0, 1) (0 = off)")
    if cfg.checkpoint_every < 1 or cfg.report_every < 1:
        raise ValueError("--checkpoint-every and --report-every must be >= 1")
    if cfg.tlpips_backbone not in ("pretrained", "random") or cfg.tlpips_net not in ("alex", "vgg"):
        raise ValueError(f"--tlpips-backbone must be pretrained|random and --tlpips-net alex|vgg, got "
                         f"{cfg.tlpips_backbone!r}, {cfg.tlpips_net!r}")
    parse_dtype(cfg.vae_dtype)
    from degrade import PRESETS, preset
    from degrade.sampling import check_size

    if cfg.degrade not in PRESETS:
        raise ValueError(f"--degrade {cfg.degrade!r}: choose from {', '.join(PRESETS)}")
    if cfg.crop < 4 or cfg.crop % 4:
        raise ValueError(f"--crop {cfg.crop}: must be a positive multiple of 4 (the x4 low-res crop is crop / 4)")
    try:
        check_size(preset(cfg.degrade, scale=4), cfg.crop, cfg.crop, what=f"--crop {cfg.crop}")
    except ValueError as exc:
        raise ValueError(f"{exc} (--degrade {cfg.degrade})") from None
    if cfg.loss.lambda_tlpips > 0 and cfg.tlpips_backbone == "pretrained":
        from models import losses

        hub = getattr(losses, "_hub_checkpoint", None)
        if hub is not None and not os.path.isfile(hub(cfg.tlpips_net)):
            raise ValueError(f"--tlpips-backbone pretrained: the {cfg.tlpips_net} ImageNet weights are not in the "
                             f"torch hub cache ({hub(cfg.tlpips_net)}); copy them there (TORCH_HOME) or pass "
                             f"--tlpips-backbone random (plumbing only: not a perceptual loss)")
    ds = tc.load_deepspeed_config(cfg.deepspeed_config, 1, False, cfg.zero_stage)
    if int(ds.get("zero_optimization", {}).get("stage", 0)) >= 3:
        raise ValueError(f"ZeRO-3 ({cfg.deepspeed_config}, --zero-stage {cfg.zero_stage}) is not supported: the "
                         "generator step reads the discriminator's parameters, which ZeRO-3 partitions; use 0-2")
    if cfg.flow.lower() != "none" and not storage.exists(cfg.flow):
        raise ValueError(f"--flow {cfg.flow}: no such file (a drfa.safetensors from jobs/pretrain_drfa.py, or 'none')")
    if _is_local_path(cfg.teacher) and not os.path.isdir(os.path.join(cfg.teacher, "unet")):
        raise ValueError(f"--teacher {cfg.teacher}: not a prior folder (no unet/ inside); give a save_pretrained "
                         f"folder, a hub id or one of {BUILTIN_TEACHERS}")
    if not storage.exists(cfg.shards):
        raise ValueError(f"--shards {cfg.shards}: not found (build them with jobs/build_shards.py)")
    if cfg.student_init and not storage.exists(_student_dir(cfg.student_init) + "/config.json"):
        raise ValueError(f"--student-init {cfg.student_init}: no student inside (want a model folder from "
                         f"jobs/distill.py, or its student/ folder with config.json)")


def _student_dir(path: str) -> str:
    """The student UNet folder of --student-init: `<path>/student` for a model folder, else `path`."""
    path = path.rstrip("/")
    inner = f"{path}/{model_folder.STUDENT_DIR}"
    return inner if storage.exists(inner + "/config.json") else path


def _is_local_path(teacher: str) -> bool:
    """A teacher given as a local folder (not built in, not s3://, not a hub id 'owner/name')."""
    if teacher in BUILTIN_TEACHERS or storage.is_remote(teacher):
        return False
    return os.path.isabs(teacher) or teacher.startswith(".") or os.path.exists(teacher) or teacher.count("/") != 1


# --------------------------------------------------------------------------- models


def build_models(cfg: DistillTrainConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """`(DistillModels, UpscalerBundle)`: the frozen teacher bundle (from --teacher), the
    frozen DRFA (from --flow), the student (a copy of the prior with zero temporal weights),
    the discriminator (a trainable copy of the prior's encoder + seeded heads) and T-LPIPS.
    Deterministic in (cfg.model_seed, cfg.seed): every rank builds the same weights."""
    from models.discriminator import LatentDiscriminator
    from models.losses import TemporalLPIPS
    from models.presets import discriminator_preset, load_bundle
    from models.upscaler.video import VideoUpscaler
    from pipelines.train.distill_step import DistillModels

    device = torch.device(device)
    with storage.local_dir(cfg.teacher) as teacher:
        bundle = load_bundle(teacher, prompt=cfg.upscaler.prompt, negative_prompt=cfg.upscaler.negative_prompt,
                             seed=cfg.model_seed)
    flow_net = None
    if cfg.flow.lower() != "none":
        from models.flow import load as load_flow

        with storage.local_copy(cfg.flow) as path:
            flow_net = load_flow(path)
    student_unet = None
    if cfg.student_init:
        from diffusers import UNet2DConditionModel

        with storage.local_dir(_student_dir(cfg.student_init)) as path:
            student_unet = UNet2DConditionModel.from_pretrained(path, torch_dtype=torch.float32)
    try:
        up = VideoUpscaler(bundle, cfg.upscaler, flow_net, student_unet=student_unet, device=device, dtype=dtype,
                           vae_dtype=parse_dtype(cfg.vae_dtype))
    except (ValueError, RuntimeError) as exc:
        if student_unet is None:
            raise
        raise ValueError(f"--student-init {cfg.student_init}: does not fit --teacher {cfg.teacher}: {exc}") from None
    head = cfg.d_head_channels or min(128, int(up.teacher.config.block_out_channels[0]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        disc = LatentDiscriminator(up.teacher, discriminator_preset("sd-x4", head_channels=head,
                                                                    train_encoder=cfg.d_train_encoder))
        if cfg.gradient_checkpointing:
            # the student only: a checkpointed D block would be recomputed in the generator's
            # backward with D's real parameters, which the isolation keeps out of that graph
            up.student.enable_gradient_checkpointing()
        tlpips = None
        if cfg.loss.lambda_tlpips > 0:
            tlpips = TemporalLPIPS(net=cfg.tlpips_net, backbone=cfg.tlpips_backbone).to(device)
    return DistillModels(up, disc, tlpips), bundle


# --------------------------------------------------------------------------- one step


def distill_step(models, g_engine, d_engine, batch, cfg, generator: torch.Generator | None = None
                 ) -> dict[str, float]:
    """One alternating step: the student's Eq. 6 loss -> `g_engine`, then D's loss on the same
    (detached) samples -> `d_engine`. An engine is a DeepSpeed engine or anything with
    `backward(loss)` and `step()`. D is not updated when `cfg.lambda_adv == 0`."""
    from pipelines.train.distill_step import discriminator_step, generator_step

    keep: dict = {}
    loss, metrics = generator_step(models, batch, cfg, generator, keep=keep)
    g_engine.backward(loss)
    g_engine.step()
    if cfg.lambda_adv != 0:
        d_loss, d_metrics = discriminator_step(models, batch, cfg, generator, fake=keep["fake"])
        d_engine.backward(d_loss)
        d_engine.step()
        metrics.update(d_metrics)
    return metrics


def plain_engines(models, lr: float, d_lr: float | None = None):
    """(student, discriminator) engines for one process without DeepSpeed (benchmarks, tests):
    torch Adam over each network's trainable parameters, no gradient clipping."""
    up, disc = models.upscaler, models.discriminator
    g = tc.PlainEngine(up.student, torch.optim.Adam(up.trainable_parameters(), lr=lr), grad_clip=0.0)
    d = tc.PlainEngine(disc, torch.optim.Adam(disc.trainable_parameters(), lr=d_lr or lr), grad_clip=0.0)
    return g, d


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The training noise of (rank, step): the same after a resume as in the killed attempt."""
    return torch.Generator("cpu").manual_seed(((seed * 1_000_003 + rank) * 1_000_003 + step) % (2 ** 63))


def _mean_over_ranks(metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(metrics)
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return dict(zip(keys, (values / dist.get_world_size()).tolist()))


# --------------------------------------------------------------------------- the worker


def _batches(cfg: DistillTrainConfig, micro_batch: int, scale: int, rank: int, world: int, start_epoch: int):
    from pipelines.data.loaders import LoaderConfig, epochs, make_distill_loader

    lcfg = LoaderConfig(batch_size=micro_batch, num_workers=cfg.loader_workers, seed=cfg.seed, degrade=cfg.degrade,
                        scale=scale, crop=cfg.crop, clip_len=cfg.clip_len)
    return epochs(make_distill_loader, cfg.shards, lcfg, rank, world, start_epoch)


def train_loop_per_worker(config: dict) -> None:
    import ray.train

    cfg = cli.from_dict(DistillTrainConfig, config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device("cpu")
    if cfg.use_gpu:
        import ray.train.torch

        device = ray.train.torch.get_device()
    micro = cfg.batch_size // world
    ds_config = tc.load_deepspeed_config(cfg.deepspeed_config, micro, cfg.use_gpu, cfg.zero_stage,
                                         grad_clip=cfg.grad_clip)
    half = torch.bfloat16 if ds_config.get("bf16", {}).get("enabled") is True else torch.float32
    dcfg = cfg.loss

    # 1. Models (identical on every rank), one DeepSpeed engine + Adam each for student and D.
    torch.manual_seed(cfg.seed)
    models, bundle = build_models(cfg, device, half)
    up = models.upscaler
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    g_engine, _, _ = tc.init_engine(up.student, torch.optim.Adam(up.trainable_parameters(), lr=cfg.lr, betas=betas),
                                    ds_config)
    d_engine, _, _ = tc.init_engine(models.discriminator,
                                    torch.optim.Adam(models.discriminator.trainable_parameters(), lr=cfg.d_lr,
                                                     betas=betas),
                                    ds_config)
    up.student = g_engine                # every student forward through its engine (module docstring)
    models.discriminator = d_engine      # the D step through its engine; the G step uses d_engine.module
    up.train()
    engines = {"student": g_engine, "discriminator": d_engine}
    ema = WeightEMA(g_engine.module, cfg.ema_decay) if cfg.ema_decay else None
    if ema is not None:
        engines["student_ema"] = ema     # saved and resumed with the checkpoint (rank 0 writes it)

    # 2. Resume: after a worker failure, or a new run with the same name.
    state = tc.restore_checkpoint(engines)
    step = resumed_from = int(state.get("step", 0))
    start_epoch = int(state["epoch"]) + 1 if state else 0
    if step and rank == 0:
        print(f"[distill] resumed at step {step} (data epoch {start_epoch})", flush=True)

    def checkpoint(step: int, epoch: int, metrics: dict, final: bool) -> None:
        # the export is the EMA when there is one, else the engine's weights (every rank: a collective under ZeRO-3)
        g_weights = ema.state_dict() if ema is not None else tc.state_dict_for_export(g_engine)
        d_weights = tc.state_dict_for_export(d_engine)
        tc.save_checkpoint(engines, step, metrics, extra_state={"epoch": epoch, "metrics": metrics},
                           export=lambda folder: model_folder.save(folder, models, cfg, step=step, complete=final,
                                                              bundle=bundle, student_weights=g_weights,
                                                              discriminator_weights=d_weights))

    if step >= cfg.steps:                # a finished run started again: export once more, train nothing
        checkpoint(step, start_epoch - 1, {**state.get("metrics", {}), "step": step, "resumed_from": resumed_from},
                   final=True)
        return

    # 3. Train: G and D alternately.
    data = _batches(cfg, micro, up.scale, rank, world, start_epoch)
    t0, done = time.time(), 0
    while step < cfg.steps:
        epoch, batch = next(data)
        batch = {"lq": batch["lq"].to(device), "hq": batch["hq"].to(device)}
        metrics = distill_step(models, g_engine, d_engine, batch, dcfg, step_generator(cfg.seed, rank, step))
        if ema is not None:
            ema.update(g_engine.module)
        step += 1
        done += 1
        tc.maybe_inject_failure(cfg, step)
        last = step == cfg.steps
        save = step % cfg.checkpoint_every == 0 or last
        if not (save or step % cfg.report_every == 0):
            continue
        metrics = _mean_over_ranks(metrics, device)
        metrics.update(step=step, epoch=epoch, resumed_from=resumed_from,
                       clips_per_s=done * cfg.batch_size / (time.time() - t0))
        if save:
            checkpoint(step, epoch, metrics, final=last)
        else:
            ray.train.report(metrics)
        if rank == 0:
            print(f"[distill] step {step}/{cfg.steps} loss {metrics['loss']:.4f} distill {metrics['distill']:.4f} "
                  f"adv_g {metrics['adv_g']:.4f} tlpips {metrics['tlpips']:.4f} d_loss {metrics.get('d_loss', 0):.4f} "
                  f"{metrics['clips_per_s']:.2f} clips/s", flush=True)


# --------------------------------------------------------------------------- the driver


def distill(cfg: DistillTrainConfig) -> dict:
    """Run the trainer; copy the final export (a complete restorable model) to `cfg.out`.
    Returns a summary and prints it on one line."""
    t0 = time.time()
    cfg = tc.absolute_paths(cfg, "shards", "flow", "student_init", "upscaler.pretrained")
    check_config(cfg)
    result = tc.run(train_loop_per_worker, dataclasses.asdict(cfg), cfg)
    if result.error:
        raise RuntimeError(f"distillation failed: {result.error}")
    if result.checkpoint is None:
        raise RuntimeError(f"distillation run {cfg.run_name} reported no checkpoint")
    with result.checkpoint.as_directory() as folder:
        exported = os.path.join(folder, "export")
        meta = json.loads(Path(exported, model_folder.RESTORER_JSON).read_text())
        if not meta.get("complete"):
            raise RuntimeError(f"the last checkpoint of {cfg.run_name} (step {meta.get('step')}) "
                               "has no complete export")
        storage.upload_tree(exported, cfg.out, last=(model_folder.RESTORER_JSON,))
    m = result.metrics or {}
    summary = {"steps": m.get("step"), "loss": m.get("loss"), "distill": m.get("distill"), "adv_g": m.get("adv_g"),
               "tlpips": m.get("tlpips"), "d_loss": m.get("d_loss"), "resumed_from": m.get("resumed_from"),
               "export": cfg.out, "checkpoint": result.checkpoint.path, "seconds": round(time.time() - t0, 1)}
    print(f"[distill] done: {json.dumps(summary)}", flush=True)
    return summary

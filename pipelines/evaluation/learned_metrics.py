"""Learned metrics, each built offline from local weights: torchvision RAFT-large (flow),
LPIPS (AlexNet v0.1) and the pyiqa metrics (DISTS, MUSIQ, MANIQA, CLIP-IQA, NIQE, PIQE).
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from pipelines.evaluation.weights import (
    LPIPS_BACKBONE,
    LPIPS_HEADS,
    PYIQA_ARCH,
    REQUIRED_FILES,
    MissingWeights,
    find_weight,
    offline,
)


class RaftFlow:
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


class LPIPSMetric:
    """LPIPS AlexNet v0.1 from the lpips package, built offline: linear heads from the
    package, trunk from a local torchvision AlexNet checkpoint or (plumbing tests only) a
    seeded random trunk. Call with (N,3,H,W) in [0, 1]."""

    def __init__(self, weights_dir, device, random_backbone: bool):
        import lpips

        with offline(weights_dir), torch.random.fork_rng(devices=[]):
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


class PyiqaMetric:
    """A pyiqa metric built offline from local files; call with (1,3,H,W) in [0, 1]."""

    def __init__(self, name: str, weights_dir, device):
        import pyiqa

        opts: dict = {}
        files = {f: find_weight(f, weights_dir) for f in REQUIRED_FILES.get(name, ())}
        if name in ("niqe", "niqe_frames", "musiq"):
            opts["pretrained_model_path"] = str(files[REQUIRED_FILES[name][0]])
        elif name == "dists":
            opts["pretrained_model_path"] = str(files["DISTS_weights-f5e65c96.pth"])
        elif name == "clipiqa":
            opts["backbone"] = str(files["RN50.pt"])
        with offline(weights_dir, PYIQA_ARCH[name]), contextlib.redirect_stdout(sys.stderr):
            self.metric = pyiqa.create_metric("niqe" if name == "niqe_frames" else name,
                                              device=torch.device(device), as_loss=False, **opts)
        self.metric.eval()
        self.device, self.name = device, name

    MIN_SIDE: ClassVar[dict[str, int]] = {"niqe": 96, "niqe_frames": 96}   # NIQE works on 96 px blocks

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor | None = None) -> float:
        need = self.MIN_SIDE.get(self.name, 0)
        if min(a.shape[-2:]) < need:
            raise ValueError(f"{self.name} needs frames of at least {need}x{need} px, got "
                             f"{a.shape[-1]}x{a.shape[-2]}")
        a = a.to(self.device)
        out = self.metric(a) if b is None else self.metric(a, b.to(self.device))
        return float(out.mean())


def as_float_tensor(rgb_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(rgb_u8, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div(255.0).unsqueeze(0)

"""Build, save, load and run a `FlowNet`.

A checkpoint is ONE safetensors file (e.g. `drfa.safetensors`) whose metadata holds the
`FlowConfig` as JSON under "flow_config", plus a human-readable sidecar with the same
config next to it (`drfa.json`). `load` rebuilds the network from the embedded config and
loads the weights strictly, so a checkpoint cannot be read into the wrong variant.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from models.flow.config import FlowConfig
from models.flow.network import FlowNet

FORMAT = "d2vr-flow/1"


def build(config: FlowConfig) -> FlowNet:
    """A freshly initialised network for `config`."""
    if not isinstance(config, FlowConfig):
        raise ValueError(f"build: config must be a FlowConfig, got {type(config).__name__}")
    return FlowNet(config)


def save(model: FlowNet, path: str | os.PathLike) -> Path:
    """Write `path` (safetensors, config in its metadata) and `path.with_suffix('.json')`."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save: {path} should end in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    config_json = model.config.to_json()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": FORMAT, "flow_config": config_json,
                                          "variant": model.config.variant})
    path.with_suffix(".json").write_text(json.dumps(json.loads(config_json), indent=2, sort_keys=True) + "\n")
    return path


def read_config(path: str | os.PathLike) -> FlowConfig:
    """The `FlowConfig` embedded in a checkpoint's metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT or "flow_config" not in meta:
        raise ValueError(f"load: {path} is not a d2vr flow checkpoint (metadata format={meta.get('format')!r})")
    return FlowConfig.from_json(meta["flow_config"])


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> FlowNet:
    """Rebuild the network from the embedded config and load its weights (strict); eval mode."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"load: no checkpoint at {path}")
    model = FlowNet(read_config(path))
    model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    return model.to(device).eval()


@torch.no_grad()
def estimate_flow(model: FlowNet, img1: torch.Tensor, img2: torch.Tensor, iters: int | None = None,
                  flow_init: torch.Tensor | None = None) -> torch.Tensor:
    """Final flow img1 -> img2 in eval mode without gradients; (B,3,H,W) -> (B,2,H,W), or
    (3,H,W) -> (2,H,W). Images move to the model's device; `iters` defaults to test_iters."""
    unbatched = img1.ndim == 3
    if unbatched:
        img1, img2 = img1.unsqueeze(0), img2.unsqueeze(0)
        flow_init = flow_init.unsqueeze(0) if flow_init is not None else None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = model(img1.to(device), img2.to(device), iters=iters,
                    flow_init=flow_init.to(device) if flow_init is not None else None, final_only=True)
    finally:
        model.train(was_training)
    return out.flow[0] if unbatched else out.flow

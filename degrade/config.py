"""Typed, frozen configuration of the degradation chain, and the named presets.

Defaults reproduce the published second-order model:
  [ESRGAN]  Real-ESRGAN, Wang et al. 2021 (arXiv:2107.10833), Sec. 3 and its training
            options file `options/train_realesrnet_x4plus.yml` (the values quoted below).
  [RBVSR]   RealBasicVSR, Chan et al. 2022 (arXiv:2111.12704), its REDS training config
            (video compression and the per-frame parameter drift, "*_step").
So `DegradeConfig()` is the full "heavy" model; `preset()` names lighter ones.

Units: blur sigma in pixels of the image the blur is applied to; angles in radians;
noise sigma in 8-bit grey levels (divided by 255 when applied); resize factors are
relative to that stage's input (stage 1) or to the target LQ size (stage 2, as in
Real-ESRGAN); JPEG quality on the IJG 1..100 scale; bitrates in bit/s.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
CODECS = ("libx264", "libx265", "mpeg4")
ODD_SIZES_7_21 = (7, 9, 11, 13, 15, 17, 19, 21)  # [ESRGAN] kernel_range = 2*v+1, v in 3..10


@dataclass(frozen=True)
class BlurConfig:
    """One blur: a kernel type drawn from `types`, or a sinc kernel with `sinc_prob`."""
    prob: float = 1.0                                  # chance the blur runs ([ESRGAN] stage 1 always blurs)
    sizes: tuple[int, ...] = ODD_SIZES_7_21            # odd kernel sizes in px, drawn uniformly [ESRGAN]
    types: tuple[str, ...] = KERNEL_TYPES              # [ESRGAN] kernel_list
    type_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # [ESRGAN] kernel_prob
    sinc_prob: float = 0.1                             # chance of a sinc (ringing) kernel instead [ESRGAN]
    sigma: tuple[float, float] = (0.2, 3.0)            # Gaussian sigma range in px [ESRGAN] blur_sigma
    beta_gaussian: tuple[float, float] = (0.5, 4.0)    # generalized-Gaussian shape [ESRGAN] betag_range
    beta_plateau: tuple[float, float] = (1.0, 2.0)     # plateau shape [ESRGAN] betap_range
    # Per-frame drift (one step drawn per clip in [-step, step], added every frame) [RBVSR]
    sigma_step: float = 0.02                           # px per frame [RBVSR] sigma_x_step
    angle_step: float = math.pi / 10                   # rad per frame [RBVSR] rotate_angle_step 0.31416
    beta_step: float = 0.05                            # per frame [RBVSR] beta_gaussian_step (plateau: 0.1)
    omega_step: float = 0.0628                         # rad/px per frame [RBVSR] omega_step


@dataclass(frozen=True)
class ResizeConfig:
    """Random up/down/keep resize; the mode is drawn uniformly from `modes`."""
    probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # P(up), P(down), P(keep) [ESRGAN] resize_prob
    range: tuple[float, float] = (0.15, 1.5)           # scale factor range [ESRGAN] resize_range
    modes: tuple[str, ...] = RESIZE_MODES              # F.interpolate modes [ESRGAN]


@dataclass(frozen=True)
class NoiseConfig:
    """Additive Gaussian (colour or grey) or Poisson (shot) noise."""
    prob: float = 1.0                                  # chance noise is added ([ESRGAN] always)
    gaussian_prob: float = 0.5                         # Gaussian vs Poisson [ESRGAN] gaussian_noise_prob
    sigma: tuple[float, float] = (1.0, 30.0)           # Gaussian std in 8-bit levels [ESRGAN] noise_range
    poisson_scale: tuple[float, float] = (0.05, 3.0)   # Poisson noise multiplier [ESRGAN] poisson_scale_range
    gray_prob: float = 0.4                             # same noise on all channels [ESRGAN] gray_noise_prob
    sigma_step: float = 0.1                            # levels per frame [RBVSR] gaussian_sigma_step
    poisson_step: float = 0.005                        # per frame [RBVSR] poisson_scale_step


@dataclass(frozen=True)
class JpegConfig:
    prob: float = 1.0                                  # chance JPEG runs ([ESRGAN] always)
    quality: tuple[int, int] = (30, 95)                # IJG quality range [ESRGAN] jpeg_range
    quality_step: float = 3.0                          # quality units per frame [RBVSR] quality_step


@dataclass(frozen=True)
class StageConfig:
    """One order of the second-order model: blur -> resize -> noise -> JPEG."""
    enabled: bool = True                               # False skips the whole stage
    blur: BlurConfig = field(default_factory=BlurConfig)
    resize: ResizeConfig = field(default_factory=ResizeConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    jpeg: JpegConfig = field(default_factory=JpegConfig)


# [ESRGAN] second order: blur2 prob 0.8, sigma2 [0.2, 1.5], resize_prob2 [0.3, 0.4, 0.3],
# resize_range2 [0.3, 1.2], noise_range2 [1, 25], poisson_scale_range2 [0.05, 2.5].
STAGE2 = StageConfig(
    blur=BlurConfig(prob=0.8, sigma=(0.2, 1.5)),
    resize=ResizeConfig(probs=(0.3, 0.4, 0.3), range=(0.3, 1.2)),
    noise=NoiseConfig(sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5)),
    # Real-ESRGAN's second-order JPEG is the final one (FinalConfig.jpeg): none here.
    jpeg=JpegConfig(prob=0.0),
)


@dataclass(frozen=True)
class FinalConfig:
    """Resize to the LQ size + sinc filter, and JPEG, in a random order [ESRGAN]."""
    resize_modes: tuple[str, ...] = RESIZE_MODES       # mode of the resize to H//s x W//s [ESRGAN]
    sinc_prob: float = 0.8                             # chance of the final sinc filter [ESRGAN] final_sinc_prob
    sinc_sizes: tuple[int, ...] = ODD_SIZES_7_21       # sinc kernel sizes in px [ESRGAN]
    sinc_omega: tuple[float, float] = (math.pi / 3, math.pi)  # cutoff in rad/px [ESRGAN]
    omega_step: float = 0.0628                         # rad/px per frame [RBVSR]
    resize_first_prob: float = 0.5                     # P(resize+sinc before JPEG) [ESRGAN]
    jpeg: JpegConfig = field(default_factory=JpegConfig)  # [ESRGAN] jpeg_range2 [30, 95]


@dataclass(frozen=True)
class CodecConfig:
    """Video-codec round trip of the LQ clip (CPU, PyAV in memory), applied last."""
    prob: float = 1.0                                  # chance per clip; 0 switches the stage off ([RBVSR] always)
    codecs: tuple[str, ...] = CODECS                   # FFmpeg encoders [RBVSR] uses libx264/h264/mpeg4
    codec_probs: tuple[float, ...] = (1 / 3, 1 / 3, 1 / 3)  # [RBVSR] codec_prob
    bitrate_prob: float = 1.0                          # P(bitrate mode) vs constant quality (CRF / qscale)
    bitrate: tuple[float, float] = (1e4, 1e5)          # bit/s, uniform [RBVSR], for a 64x64 clip (RBVSR's
    #                                                    LQ patch); scaled by pixel count for other sizes
    crf: tuple[int, int] = (18, 35)                    # x264/x265 CRF range when not in bitrate mode (ours;
    #                                                    18 ~ visually lossless, 35 blocky)
    qscale: tuple[int, int] = (2, 20)                  # mpeg4 constant quantiser (ours; 2 best .. 31 worst)
    fps: int = 25                                      # frame rate given to the encoder (rate control)
    preset: str = "veryfast"                           # x264/x265 speed preset


@dataclass(frozen=True)
class DegradeConfig:
    """The whole chain: stage1 -> stage2 -> final (resize to H//s x W//s, sinc, JPEG) -> codec."""
    scale: int = 4                                     # integer down-scaling factor; LQ is (H//s, W//s)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = STAGE2
    final: FinalConfig = field(default_factory=FinalConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    drift: bool = True                                 # per-frame parameter drift [RBVSR]; False: frozen params
    name: str = "heavy"                                # preset name, copied into each record

    def __post_init__(self):
        if not isinstance(self.scale, int) or isinstance(self.scale, bool) or self.scale < 1:
            raise ValueError(f"DegradeConfig.scale must be an integer >= 1, got {self.scale!r}")
        for stage in (self.stage1, self.stage2):
            for name, probs, n in (("blur.type_probs", stage.blur.type_probs, len(stage.blur.types)),
                                   ("resize.probs", stage.resize.probs, 3)):
                if len(probs) != n or min(probs) < 0 or sum(probs) <= 0:
                    raise ValueError(f"DegradeConfig: {name} {probs} must be {n} non-negative weights")
        if len(self.codec.codec_probs) != len(self.codec.codecs):
            raise ValueError("DegradeConfig: codec.codec_probs must match codec.codecs")
        unknown = set(self.codec.codecs) - set(CODECS)
        if unknown:
            raise ValueError(f"DegradeConfig: unknown codecs {sorted(unknown)}; choose from {CODECS}")

    def replace(self, **changes) -> DegradeConfig:
        return dataclasses.replace(self, **changes)


OFF = StageConfig(enabled=False)


def preset(name: str, scale: int = 4) -> DegradeConfig:
    """A named configuration: clean, light, medium, heavy (the paper's "severe degradation")."""
    if name == "heavy":
        return DegradeConfig(scale=scale, name="heavy")
    if name == "clean":
        # Only the final resize to the target size (box average: "area"), nothing random.
        return DegradeConfig(
            scale=scale, stage1=OFF, stage2=OFF, drift=False, name="clean",
            final=FinalConfig(resize_modes=("area",), sinc_prob=0.0, jpeg=JpegConfig(prob=0.0)),
            codec=CodecConfig(prob=0.0))
    if name == "medium":
        # Real-ESRGAN's first order at full strength, a milder second order half the time,
        # a visible but moderate codec stage half the time.
        return DegradeConfig(
            scale=scale, name="medium",
            stage1=StageConfig(noise=NoiseConfig(sigma=(1.0, 20.0), poisson_scale=(0.05, 2.0)),
                               jpeg=JpegConfig(quality=(40, 95))),
            stage2=dataclasses.replace(STAGE2, blur=BlurConfig(prob=0.5, sigma=(0.2, 1.2)),
                                       noise=NoiseConfig(prob=0.5, sigma=(1.0, 15.0), poisson_scale=(0.05, 1.5))),
            final=FinalConfig(sinc_prob=0.5, jpeg=JpegConfig(quality=(40, 95))),
            codec=CodecConfig(prob=0.5, bitrate_prob=0.0, crf=(23, 33), qscale=(4, 12)))
    if name == "light":
        # One order, small blur / noise, high JPEG quality, near-transparent codec.
        return DegradeConfig(
            scale=scale, name="light",
            stage1=StageConfig(blur=BlurConfig(sigma=(0.2, 1.5), sinc_prob=0.0),
                               resize=ResizeConfig(probs=(0.2, 0.5, 0.3), range=(0.5, 1.2)),
                               noise=NoiseConfig(prob=0.5, sigma=(1.0, 8.0), poisson_scale=(0.05, 0.5)),
                               jpeg=JpegConfig(quality=(70, 95))),
            stage2=OFF,
            final=FinalConfig(sinc_prob=0.2, jpeg=JpegConfig(prob=0.5, quality=(70, 95))),
            codec=CodecConfig(prob=0.3, bitrate_prob=0.0, crf=(18, 26), qscale=(2, 6)))
    raise ValueError(f"unknown degradation preset {name!r}; choose from clean, light, medium, heavy")


PRESETS = ("clean", "light", "medium", "heavy")

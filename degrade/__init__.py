"""degrade: realistic clip degradation (second-order blur/resize/noise/JPEG + video codec)
and optical-flow pair synthesis with exact ground truth. Plain PyTorch/NumPy/PyAV.

    cfg = preset("heavy", scale=4)                  # clean, light, medium, heavy
    lq, record = degrade_clip(hq, cfg, rng)         # hq (T, 3, H, W) in [0, 1] -> (T, 3, H//s, W//s)
    assert torch.equal(replay(hq, record), lq)      # record: plain JSON, the whole program
    lq_b, records = degrade_batch(hq_b, cfg, rng)   # (B, T, 3, H, W), on hq_b's device
    img1, img2, flow, valid = make_flow_pair(frame, other, FlowPairConfig(), rng)
    img1d, img2d, flow_d, valid_d, record = degrade_flow_pair(img1, img2, flow, valid,
                                                              preset("heavy", scale=1), rng)

Modules: config (dataclasses, presets, sources of the defaults), kernels (blur kernels),
ops (blur/resize/noise/rounding on tensors), jpeg (torch JPEG), codec (PyAV round trip),
sampling (config + numpy Generator -> records), chain (apply / replay), flowpairs, preview.

Rules worth knowing:
  * Size: the clip is cropped at the bottom/right to a multiple of s, so the LQ is exactly
    (H // s, W // s) and each LQ pixel covers one s x s block (`crop_to_scale` gives the
    matching ground truth). Output is float32 on 8-bit levels.
  * One draw per clip, shared by its frames (with RealBasicVSR's small linear drift when
    `drift`); in a batch, which ops run and the intermediate sizes are shared (Real-ESRGAN
    does the same per batch), magnitudes are per clip.
  * Replay is bit-identical on the same device (noise comes from a torch.Generator seeded
    from the record, on the tensors' device); the codec stage is deterministic (encoders
    single-threaded; libx265 frames padded to >= 128 px, see codec.py).
  * A frame too small for the largest blur kernel of the config raises ValueError.
"""
from degrade.chain import crop_to_scale, degrade_batch, degrade_clip, replay
from degrade.config import (
    PRESETS,
    BlurConfig,
    CodecConfig,
    DegradeConfig,
    FinalConfig,
    JpegConfig,
    NoiseConfig,
    ResizeConfig,
    StageConfig,
    preset,
)
from degrade.flowpairs import FlowPairConfig, degrade_flow_pair, make_flow_pair

__all__ = [
    "PRESETS",
    "BlurConfig",
    "CodecConfig",
    "DegradeConfig",
    "FinalConfig",
    "FlowPairConfig",
    "JpegConfig",
    "NoiseConfig",
    "ResizeConfig",
    "StageConfig",
    "crop_to_scale",
    "degrade_batch",
    "degrade_clip",
    "degrade_flow_pair",
    "make_flow_pair",
    "preset",
    "replay",
]

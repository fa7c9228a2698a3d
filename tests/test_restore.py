"""pipelines.restore without Ray: the tiny diffusion restorer, shot resets, tiles, one video."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.common import video
from pipelines.common.samples import sample_video
from pipelines.restore.archive import restore_archive
from pipelines.restore.config import RestoreConfig
from pipelines.restore.manifest import read_manifest
from pipelines.restore.restorers import BicubicRestorer, draw_noise, load_restorer
from pipelines.restore.stream import StreamStats, restore_frames, restore_video
from pipelines.restore.tiling import TileConfig, TiledRestorer, tile_spans
from tests.media import corrupt_file, shots_video


def tiny_model_dir(path) -> str:
    """The tiny upscaler saved like a real one, with a 'trained' student (random temporal
    weights, so the output depends on the previous frame) and the flow net when there is one."""
    from models.presets import save_tiny_pretrained
    from models.upscaler.bundle import UpscalerBundle
    from models.upscaler.video import VideoUpscaler

    save_tiny_pretrained(path, seed=0)
    up = VideoUpscaler(UpscalerBundle.from_pretrained(path))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        w = up.student.conv_in.weight
        w[:, 7:] = torch.randn(w[:, 7:].shape, generator=gen) * 0.1
    up.save_student(os.path.join(path, "student"))
    from models.flow import build, flow_preset, save

    torch.manual_seed(0)
    save(build(flow_preset("tiny", variant="drfa")), os.path.join(path, "flow.safetensors"))
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny_restore"))


@pytest.fixture(scope="module")
def diffusion(model_dir):
    torch.manual_seed(0)
    return load_restorer(RestoreConfig(model=model_dir, tile=0))


class CutsAt:
    """A shot detector with known cuts (the real one runs in the video and archive tests)."""

    def __init__(self, cuts):
        self.cuts, self.i = set(cuts), -1

    def push(self, frame):
        self.i += 1
        return self.i in self.cuts


def photo(h: int, w: int) -> torch.Tensor:
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(img, size=(h, w), mode="area")


def uint8_clip(t: int, h: int, w: int, seed: int) -> np.ndarray:
    from tests.media import textured_frames

    return textured_frames(t, h, w, seed=seed)


def noise_for(restorer, h: int, w: int, seed: int):
    return draw_noise(restorer, 1, h, w, torch.Generator().manual_seed(seed))


def test_diffusion_restorer_is_the_upscalers_student_sampler(diffusion):
    up = diffusion.up
    assert up.flow_net is not None                             # flow.safetensors was picked up
    lq = photo(32, 32)
    a, sa = up.restore_frame(lq, None, generator=torch.Generator().manual_seed(5))
    b, sb = diffusion.restore_frame(lq, None, noise_for(diffusion, 32, 32, 5))
    assert torch.equal(a, b)
    a2, _ = up.restore_frame(lq.flip(-1), sa, generator=torch.Generator().manual_seed(6))
    b2, _ = diffusion.restore_frame(lq.flip(-1), sb, noise_for(diffusion, 32, 32, 6))
    assert torch.equal(a2, b2)
    c2, _ = diffusion.restore_frame(lq.flip(-1), None, noise_for(diffusion, 32, 32, 6))
    assert not torch.equal(c2, b2), "the student must depend on the previous frame (else the reset tests are void)"


def test_state_is_reset_at_a_cut_a_shot_restores_as_its_own_video(diffusion):
    shot_a, shot_b = uint8_clip(2, 32, 32, seed=1), uint8_clip(2, 32, 32, seed=2)
    both = list(restore_frames([*shot_a, *shot_b], diffusion, detector=CutsAt([2]), seed=7))
    alone = list(restore_frames(list(shot_b), diffusion, detector=CutsAt([]), seed=7))
    for x, y in zip(both[2:], alone):
        np.testing.assert_array_equal(x, y)
    # ... which is the upscaler's own restore_clip of the shot (frame t uses seed + t)
    # (up to float rounding: restore_clip hands the flow net strided views of the clip)
    clip = video.to_uint8(diffusion.up.restore_clip(video.to_float(shot_b), seed=7))
    assert np.abs(np.stack(alone).astype(int) - clip).max() <= 1
    # a missed cut would show: the first frame after it conditioned on shot A's last frame
    missed = list(restore_frames([*shot_a, *shot_b], diffusion, detector=CutsAt([]), seed=7))
    assert np.abs(missed[2].astype(int) - alone[0].astype(int)).max() > 10
    stats = StreamStats()
    list(restore_frames([*shot_a, *shot_b], BicubicRestorer(4), detector=CutsAt([2]), stats=stats))
    assert stats.shot_starts == [0, 2] and stats.frames == 4


def test_tiled_diffusion_agrees_with_untiled_and_shows_no_seam(diffusion):
    h, w = 48, 64                                              # tiles of >= 32 px: the flow net's minimum
    lq = photo(h, w)
    noise = noise_for(diffusion, h, w, 0)
    whole, _ = diffusion.restore_frame(lq, None, noise)
    cfg = TileConfig(tile=32, overlap=16, margin=2, align=4)   # the tiny UNet downsamples by 4
    tiled = TiledRestorer(diffusion, cfg)
    for a, b in zip(noise_for(tiled, h, w, 0), noise, strict=True):   # the pipeline draws through the wrapper
        assert torch.equal(a, b)
    out, state = tiled.restore_frame(lq, None, noise)
    assert tiled.tiles_last_frame == 2 * 3 and out.shape == whole.shape
    other, _ = diffusion.restore_frame(lq, None, noise_for(diffusion, h, w, 1))
    gap = (out - whole).abs()[..., 8:-8, 8:-8].mean()
    noise_gap = (other - whole).abs()[..., 8:-8, 8:-8].mean()
    # GroupNorm statistics and the VAE's attention span the whole input, so tiles cannot
    # match exactly; the difference is small next to that of another noise draw.
    assert gap < 0.25 * noise_gap, (gap, noise_gap)
    for axis, length in ((-1, w), (-2, h)):
        edges = {4 * x - 1 for span in tile_spans(length, cfg) for x in span if 0 < x < length}
        grad = (out.narrow(axis, 1, 4 * length - 1) - out.narrow(axis, 0, 4 * length - 1)).abs()
        grad = grad.mean(dim=[d for d in range(4) if d != axis % 4])
        far = [g for i, g in enumerate(grad.tolist()) if all(abs(i - e) > 4 for e in edges)]
        assert max(grad[e].item() for e in edges) <= np.percentile(far, 98), (axis, edges)
    # the next frame runs with the blended previous frame as every tile's state
    out2, _ = tiled.restore_frame(lq, state, noise)
    assert out2.shape == out.shape and torch.isfinite(out2).all()


def test_restore_video_local_bicubic_audio_frames_and_marker(tmp_path):
    src = str(tmp_path / "in.mp4")
    frames = (f[::16, ::16] for f in video.iter_frames(sample_video("bigbuckbunny"), count=12))   # 80x45
    video.write_video(src, frames, fps="24000/1001", crf=20, audio_from=sample_video("bigbuckbunny"),
                      preset="ultrafast")
    out = str(tmp_path / "out" / "in.mp4")
    cfg = RestoreConfig(src=str(tmp_path), dst=str(tmp_path / "out"), tile=32, tile_overlap=12, tile_margin=2,
                        tile_align=4, preset="ultrafast")
    row = restore_video(src, out, load_restorer(cfg), cfg, source_size=os.path.getsize(src))
    assert row["status"] == "done", row["error"]
    info = video.probe(out)
    assert (info.frames, info.width, info.height, info.fps_fraction) == (12, 320, 180, "24000/1001")
    assert info.has_audio and info.audio_codec == "aac"
    assert row["tiles"] == len(tile_spans(45, cfg.tile_config())) * len(tile_spans(80, cfg.tile_config())) > 1
    with open(out + ".done") as f:
        marker = json.load(f)
    assert marker["frames"] == 12 and marker["output_size"] == os.path.getsize(out)
    assert row["decode_s"] > 0 and row["restore_s"] > 0 and row["encode_s"] > 0
    assert row["shots"] == 1                                   # the real detector: no cut in this piece


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated"])
def test_restore_video_bad_input_gives_a_failed_row_and_no_output(tmp_path, kind):
    good = str(tmp_path / "good.mp4")
    shots_video(good, cuts=[], n=60, height=32, width=48)
    bad = corrupt_file(str(tmp_path / f"{kind}.mp4"), kind, source=good)
    cfg = RestoreConfig(src=str(tmp_path), dst=str(tmp_path / "out"), tile=0, preset="ultrafast")
    out = str(tmp_path / "out" / f"{kind}.mp4")
    row = restore_video(bad, out, BicubicRestorer(4), cfg)
    assert row["status"] == "failed" and row["error_kind"] == "input", row
    assert bad in row["error"]
    assert not os.path.exists(out) and not os.path.exists(out + ".done")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


def test_job_script_on_a_local_folder_recovers_from_markers(tmp_path):
    """`jobs/restore.py` (flags -> RestoreConfig -> restore_archive), in-process (--no-ray),
    bicubic: a lost manifest is rebuilt from the `.done` markers without redoing work."""
    import subprocess
    import sys

    src, dst = tmp_path / "in", tmp_path / "out"
    (src / "a").mkdir(parents=True)
    shots_video(str(src / "a" / "clip.MP4"), cuts=[6], n=12, height=32, width=48)
    job = [sys.executable, "jobs/restore.py", "--src", str(src), "--dst", str(dst), "--model", "bicubic",
           "--no-ray", "--preset", "ultrafast", "--tile", "0"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    first = subprocess.run(job, cwd=root, capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "[restore] done a/clip.MP4: 12 frames, 2 shots, 48x32 -> 192x128" in first.stdout
    assert '"restored": 1' in first.stdout.splitlines()[-1]                 # the summary line
    assert video.probe(str(dst / "a" / "clip.MP4")).frames == 12
    os.remove(dst / "manifest.parquet")
    cfg = RestoreConfig(src=str(src), dst=str(dst), ray=False, tile=0, preset="ultrafast")
    again = restore_archive(cfg)
    assert (again["restored"], again["skipped"]) == (0, 1)
    (row,) = read_manifest(str(dst / "manifest.parquet")).values()
    assert row["status"] == "skipped" and row["frames"] == 12 and row["shots"] == 2
    forced = restore_archive(dataclasses.replace(cfg, force=True))
    assert forced["restored"] == 1
    with pytest.raises(ValueError, match="must differ"):
        restore_archive(dataclasses.replace(cfg, dst=str(src)))

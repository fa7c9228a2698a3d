"""pipelines.report: tables that name their convention, and an HTML report that really
renders in headless Chromium with every image loaded."""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from pipelines import report as R
from pipelines.video import write_video
from tests.media import textured_frames

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def render_dom(page: str, tmp_path) -> str:
    """The page's DOM after load, from headless Chromium (no network, throwaway profile)."""
    browser = _browser()
    if browser is None:
        pytest.skip(f"no headless browser installed (looked for {', '.join(BROWSERS)}; "
                    "Debian: apt-get install -y chromium)")
    profile = tmp_path / "chromium-profile"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", f"file://{page}"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _attr(dom: str, name: str) -> str | None:
    m = re.search(rf'<body[^>]*\s{name}="([^"]*)"', dom)
    return m.group(1) if m else None


@pytest.fixture()
def clip_set(tmp_path):
    """One 8-frame 32x32 video as GT, LQ (16x16), a bicubic method (mp4) and a noisy
    'student' method stored as a folder of PNG frames."""
    gt = textured_frames(8, 32, 32, seed=11, shift=1)
    lq = np.stack([np.asarray(Image.fromarray(f).resize((16, 16), Image.Resampling.BICUBIC)) for f in gt])
    bic = np.stack([np.asarray(Image.fromarray(f).resize((32, 32), Image.Resampling.BICUBIC)) for f in lq])
    paths = {"gt": tmp_path / "gt.mp4", "lq": tmp_path / "lq.mp4", "bicubic": tmp_path / "bicubic.mp4",
             "student": tmp_path / "student"}
    write_video(str(paths["gt"]), gt, fps=25, crf=12, preset="veryfast")
    write_video(str(paths["lq"]), lq, fps=25, crf=12, preset="veryfast")
    write_video(str(paths["bicubic"]), bic, fps=25, crf=12, preset="veryfast")
    paths["student"].mkdir()
    rng = np.random.default_rng(0)
    for i, f in enumerate(gt):
        noisy = np.clip(f.astype(int) + rng.integers(-6, 7, f.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(paths["student"] / f"{i:08d}.png")
    return paths


def test_report_renders_in_chromium_with_all_images(clip_set, tmp_path):
    rows = [{"method": "bicubic", "videos": 1, "psnr": 30.1, "lpips": "not available: alexnet-owt-7be5be79.pth"},
            {"method": "student", "videos": 1, "psnr": 33.2, "lpips": "not available: alexnet-owt-7be5be79.pth"}]
    out = tmp_path / "report"
    page = R.build_report(out, {"bicubic": clip_set["bicubic"], "student": clip_set["student"]},
                          convention="tecogan", gt=clip_set["gt"], lq=clip_set["lq"], video_key="000",
                          tables=[("Mean over videos", rows, ["method", "videos", "psnr", "lpips"])])
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    # thumbnail + crops (LQ nearest/bicubic, 2 methods, GT) + x-t profiles (LQ, 2 methods, GT)
    assert len(pngs) == 10, pngs
    text = page.read_text()
    for src in re.findall(r'<img[^>]*src="([^"]+)"', text):
        assert not os.path.isabs(src) and (out / src).is_file(), src      # relative links to real files
    profile = np.asarray(Image.open(out / "profiles" / "student.png"))
    assert profile.shape == (8, 32, 3)                                   # one row per frame
    crop = np.asarray(Image.open(out / "crops" / "LQ_nearest.png"))
    assert crop.shape[:2] == (32, 32)                                    # LQ upscaled to the output size

    dom = render_dom(str(page), tmp_path)
    assert _attr(dom, "data-images-status") == "ok", _attr(dom, "data-images-broken")
    assert _attr(dom, "data-images-total") == _attr(dom, "data-images-loaded") == "10"
    assert "Metric convention: tecogan" in dom or "Metric convention:</b> tecogan" in dom
    assert "not available: alexnet-owt-7be5be79.pth" in dom
    assert "[images ok]" in dom

    # the check can fail: a missing picture is reported as broken
    (out / "crops" / "GT.png").unlink()
    dom = render_dom(str(page), tmp_path)
    assert _attr(dom, "data-images-status") == "broken"
    assert _attr(dom, "data-images-broken") == "crops/GT.png"


def test_tables_name_the_convention(tmp_path):
    rows = [{"method": "student", "video": "000", "frames": 96, "psnr": 24.7213, "tof": 4.7151,
             "tlpips (random backbone)": 0.5, "niqe": "not available: niqe_modelparameters.mat"}]
    cols = ["method", "video", "frames", "psnr", "tof", "tlpips (random backbone)", "niqe"]
    md, path_csv = R.write_tables(tmp_path, "per_video", rows, cols, convention="stablevsr", title="Per video")
    text = md.read_text()
    assert "Metric convention: stablevsr (StableVSR eval.py)" in text
    assert "| PSNR (RGB) ↑ | tOF x10 ↓ |" in text
    assert "| student | 000 | 96 | 24.72 | 4.715 |" in text
    assert "random backbone: not LPIPS" in text and "not available: niqe_modelparameters.mat" in text
    with open(path_csv) as f:
        got = list(csv.DictReader(f))
    assert got[0]["convention"] == "stablevsr" and float(got[0]["psnr"]) == pytest.approx(24.7213)


def test_find_videos_matches_files_and_frame_folders(tmp_path):
    (tmp_path / "a").mkdir()
    for i in (10, 9, 1):
        Image.new("RGB", (4, 4)).save(tmp_path / "a" / f"{i}.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "clip.mp4").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    found = R.find_videos(tmp_path)
    assert list(found) == ["a", "sub/clip"]
    assert [p.name for p in R.frame_files(tmp_path / "a")] == ["1.png", "9.png", "10.png"]
    with pytest.raises(FileNotFoundError):
        R.find_videos(tmp_path / "missing")

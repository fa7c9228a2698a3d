"""pipelines.evaluation.report: tables that name their convention, and an HTML report that really
renders in headless Chromium with every image loaded."""
from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from pipelines.common.video import write_video
from pipelines.evaluation import report as R
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


class _Elements(HTMLParser):
    """Start tags of a page, in order, as (tag, attrs)."""

    def __init__(self, text: str):
        super().__init__()
        self.found: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, {k: v or "" for k, v in attrs}))

    def by_class(self, cls: str) -> list[dict]:
        return [a for _, a in self.found if cls in a.get("class", "").split()]


def _page_pictures(text: str) -> set[str]:
    """Every picture the page shows or can swap in: <img src> and the slider's data-srcs."""
    els = _Elements(text)
    srcs = {a["src"] for tag, a in els.found if tag == "img"}
    for a in els.by_class("ba"):
        srcs |= set(json.loads(a["data-srcs"]).values())
    return srcs


def _picture(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _assert_not_blank(img: np.ndarray, what: str) -> None:
    assert img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50, f"{what}: blank picture"


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
    # + full frames 1, 4, 6 of the same 5 choices + one player strip per source (4)
    assert len(pngs) == 1 + 5 + 4 + 3 * 5 + 4, pngs
    assert not list(out.rglob("*.jpg"))                                  # small frames stay lossless
    text = page.read_text()
    pictures = _page_pictures(text)
    for src in pictures:
        assert not os.path.isabs(src) and (out / src).is_file(), src      # relative links to real files
    assert pictures == set(pngs)                                         # and none written for nothing
    profile = np.asarray(Image.open(out / "profiles" / "student.png"))
    assert profile.shape == (8, 32, 3)                                   # one row per frame
    crop = np.asarray(Image.open(out / "crops" / "LQ_nearest.png"))
    assert crop.shape[:2] == (32, 32)                                    # LQ upscaled to the output size

    dom = render_dom(str(page), tmp_path)
    assert _attr(dom, "data-images-status") == "ok", _attr(dom, "data-images-broken")
    assert _attr(dom, "data-images-total") == _attr(dom, "data-images-loaded") == str(len(pngs))
    assert "Metric convention: tecogan" in dom or "Metric convention:</b> tecogan" in dom
    assert "not available: alexnet-owt-7be5be79.pth" in dom
    assert "[images ok]" in dom

    # the check can fail: a missing picture is reported as broken, also one that only a
    # selector of the before/after slider would show
    (out / "crops" / "GT.png").unlink()
    (out / "compare" / "f0004" / "LQ_nearest.png").unlink()
    dom = render_dom(str(page), tmp_path)
    assert _attr(dom, "data-images-status") == "broken"
    assert set(_attr(dom, "data-images-broken").split()) == {"crops/GT.png", "compare/f0004/LQ_nearest.png"}


def _clip_report(clip_set, tmp_path):
    out = tmp_path / "report"
    page = R.build_report(out, {"bicubic": clip_set["bicubic"], "student": clip_set["student"]},
                          convention="tecogan", gt=clip_set["gt"], lq=clip_set["lq"], video_key="000")
    return out, page


def _source_frames(clip_set) -> dict[str, np.ndarray]:
    """Each choice's frames at the output size, as the report should show them."""
    frames = {k: np.stack(list(R.iter_video(clip_set[k]))) for k in ("gt", "lq", "bicubic", "student")}
    lq = frames.pop("lq")
    up = {m: np.stack([R.resize(f, 32, 32, m) for f in lq]) for m in ("nearest", "bicubic")}
    return {"GT": frames["gt"], "bicubic": frames["bicubic"], "student": frames["student"],
            "LQ_nearest": up["nearest"], "LQ_bicubic": up["bicubic"]}


def test_full_frame_slider_and_synchronised_player(clip_set, tmp_path):
    out, page = _clip_report(clip_set, tmp_path)
    els = _Elements(page.read_text())
    frames = _source_frames(clip_set)

    # before/after: one pair per frame spread over the clip, student | bicubic by default
    assert len(els.by_class("ba-pick-a")) == len(els.by_class("ba-pick-b")) == 1
    options = [a for tag, a in els.found if tag == "option"]
    assert [o["value"] for o in options] == ["LQ_nearest", "LQ_bicubic", "bicubic", "student", "GT"] * 2
    assert [o["value"] for o in options if "selected" in o] == ["student", "bicubic"]
    pairs = els.by_class("ba")
    assert [int(a["data-frame"]) for a in pairs] == [1, 4, 6]
    left, right, ranges = els.by_class("ba-a"), els.by_class("ba-b"), els.by_class("ba-range")
    assert len(left) == len(right) == len(ranges) == len(els.by_class("ba-bar")) == 3
    assert all(r["type"] == "range" for r in ranges)
    for pair, a, b in zip(pairs, left, right):
        t, srcs = int(pair["data-frame"]), json.loads(pair["data-srcs"])
        assert (a["src"], b["src"]) == (srcs["student"], srcs["bicubic"])
        assert set(srcs) == set(frames)
        for key, src in srcs.items():
            img = _picture(out / src)
            _assert_not_blank(img, src)
            assert np.array_equal(img, frames[key][t]), f"{src} is not frame {t} of {key}"
    assert len(els.by_class("ba-ref")) == 3                              # GT beside every pair

    # synchronised playback: one strip per source, one set of controls
    players = els.by_class("player")
    assert len(players) == 1 and players[0]["data-frames"] == "8" and float(players[0]["data-fps"]) == 25
    assert len(els.by_class("pl-play")) == len(els.by_class("pl-prev")) == len(els.by_class("pl-next")) == 1
    scrub = els.by_class("pl-scrub")
    assert len(scrub) == 1 and (scrub[0]["min"], scrub[0]["max"]) == ("0", "7")
    sprites = [a for tag, a in els.found if tag == "img" and a["src"].startswith("play/")]
    assert [a["alt"] for a in sprites] == ["LQ, bicubic", "bicubic", "student", "GT"]
    for a, key in zip(sprites, ["LQ_bicubic", "bicubic", "student", "GT"]):
        sheet, cols = _picture(out / a["src"]), int(a["data-cols"])
        assert sheet.shape[1] == cols * 32 and sheet.shape[0] % 32 == 0
        for t in range(8):
            r, c = divmod(t, cols)
            cell = sheet[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32]
            _assert_not_blank(cell, f"{a['src']} frame {t}")
            assert np.array_equal(cell, frames[key][t]), f"{a['src']}: cell {t} is not frame {t} of {key}"


_PROBE = """
<script>
window.addEventListener('load', function () {
  function pos(p) {
    return [].map.call(p.querySelectorAll('.strip img'), function (im) { return im.style.left + ' ' + im.style.top; });
  }
  var r = {}, ba = document.querySelector('.ba'), range = ba.querySelector('.ba-range');
  range.value = '25';
  range.dispatchEvent(new Event('input'));
  r.clip = ba.querySelector('.ba-a').style.clipPath;
  r.bar = ba.querySelector('.ba-bar').style.left;
  var pick = document.querySelector('.ba-pick-b');
  pick.value = 'GT';
  pick.dispatchEvent(new Event('change'));
  r.right = [].map.call(document.querySelectorAll('.ba-b'), function (im) { return im.getAttribute('src'); });
  r.tag = ba.querySelector('.ba-tag-b').textContent;
  var p = document.querySelector('.player'), play = p.querySelector('.pl-play');
  r.start = pos(p);
  play.click();
  r.button = play.textContent;
  setTimeout(function () {
    play.click();
    r.played = Number(p.getAttribute('data-frame'));
    r.at_played = pos(p);
    var scrub = p.querySelector('.pl-scrub');
    scrub.value = '5';
    scrub.dispatchEvent(new Event('input'));
    r.scrubbed = Number(p.getAttribute('data-frame'));
    r.at_scrubbed = pos(p);
    p.querySelector('.pl-next').click();
    r.stepped = Number(p.getAttribute('data-frame'));
    r.right_loaded = [].every.call(document.querySelectorAll('.ba-b'), function (im) {
      return im.complete && im.naturalWidth > 0; });
    document.body.setAttribute('data-probe', JSON.stringify(r));
  }, 130);
});
</script>
"""


def test_slider_and_player_work_in_chromium(clip_set, tmp_path):
    """Drive the page as a person would: drag the divider, pick GT for the right side,
    press play, then scrub; every strip must show the same frame throughout."""
    out, page = _clip_report(clip_set, tmp_path)
    probe = out / "probe.html"                      # next to index.html: same relative links
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    dom = render_dom(str(probe), tmp_path)
    assert _attr(dom, "data-images-status") == "ok", _attr(dom, "data-images-broken")
    r = json.loads(html.unescape(_attr(dom, "data-probe")))
    assert r["clip"] == "inset(0px 75% 0px 0px)" and r["bar"] == "25%"
    assert r["right"] == [f"compare/f{t:04d}/GT.png" for t in (1, 4, 6)] and r["tag"] == "GT"
    assert r["right_loaded"]
    assert r["button"] == "pause"

    def at(t, cols=3, size=256):                    # 32 px frames shown x8, 3 per sheet row
        return f"{-(t % cols) * size}px {-(t // cols) * size}px".replace("-0px", "0px")

    assert r["start"] == [at(0)] * 4
    assert 0 < r["played"] < 8 and r["at_played"] == [at(r["played"])] * 4   # lockstep while playing
    assert r["scrubbed"] == 5 and r["at_scrubbed"] == [at(5)] * 4
    assert r["stepped"] == 6


def test_large_frames_are_jpeg_and_player_previews_small(tmp_path):
    """HD-like frames: stills at full size as JPEG, player strips downscaled to 360 px wide;
    with neither bicubic nor LQ nor GT the slider compares the two methods."""
    clip = textured_frames(4, 400, 800, seed=3)
    methods = {}
    for name, delta in (("a", 0), ("b", 40)):
        folder = tmp_path / name
        folder.mkdir()
        for i, f in enumerate(clip):
            Image.fromarray(np.clip(f.astype(int) + delta, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
        methods[name] = folder
    out = tmp_path / "report"
    page = R.build_report(out, methods, convention="tecogan")
    els = _Elements(page.read_text())
    assert [o["value"] for o in [a for tag, a in els.found if tag == "option"] if "selected" in o] == ["a", "b"]
    pairs = els.by_class("ba")
    assert [int(p["data-frame"]) for p in pairs] == [0, 2, 3]
    assert not els.by_class("ba-ref")                                    # no GT, none beside
    for p in pairs:
        for src in json.loads(p["data-srcs"]).values():
            assert src.endswith(".jpg")
            img = _picture(out / src)
            assert img.shape == (400, 800, 3)
            _assert_not_blank(img, src)
    sprites = [a for tag, a in els.found if tag == "img" and a["src"].startswith("play/")]
    assert [a["src"] for a in sprites] == ["play/a.png", "play/b.png"]   # 4 frames of 360x180: PNG
    preview = np.asarray(Image.fromarray(clip[2]).resize((360, 180), Image.Resampling.BICUBIC))
    for a in sprites:
        assert (a["data-w"], a["data-h"]) == ("360", "180")
        sheet, cols = _picture(out / a["src"]), int(a["data-cols"])
        assert sheet.shape == (-(-4 // cols) * 180, cols * 360, 3)
        r, c = divmod(2, cols)
        cell = sheet[r * 180:(r + 1) * 180, c * 360:(c + 1) * 360]
        _assert_not_blank(cell, a["src"])
        if a["src"] == "play/a.png":
            assert np.array_equal(cell, preview)                        # frame 2, downscaled
    assert sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) < 8_000_000


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

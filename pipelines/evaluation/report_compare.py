"""Full-frame comparisons for the HTML report (`pipelines.evaluation.report`): a before/after slider
and a synchronised player, fed while the report reads each video once.

    compare = Comparison(out_dir, height=H, width=W, n_frames=T, fps=clip_fps(paths))
    for name, slug, frames in sources:            # "LQ", the methods, "GT"
        for t, frame in enumerate(frames):
            compare.add(t, frame)
        compare.close_source(name, slug)
    parts.append(compare.html())                  # STYLE goes in <head>, SCRIPT before </body>

- before/after: a few frames spread over the clip (`stills`, default 3) are written at the
  output size for every source (the LQ input upscaled nearest and bicubic). Each frame is
  one pair with a draggable vertical divider (an invisible range input over two stacked
  images, the top one clipped), the ground truth beside it when there is one; two selectors,
  shared by the frames, say which sources are left and right. Default: the first method not
  called "bicubic" against "bicubic" (else the LQ input upscaled bicubic, else GT). Every
  choice is listed in the pair's `data-srcs` (JSON: key -> image) so the page's load check
  loads them all;
- synchronised playback: per source, its first `play_frames` frames, at most `play_width` px
  wide, tiled into one image (a sprite sheet). One play/pause button, step buttons and a
  scrubber drive a single frame index that every strip shows: all play in lockstep, frame
  exact. Frame strips, not <video>: method outputs are often frame folders or files a
  browser cannot play (H.264 4:4:4, FFV1, ...), and linking them would tie the report to
  files outside its folder.
Pictures up to 640x480 px are written as PNG (lossless), larger ones as JPEG (4:4:4; q95
for stills, as pipelines.data.shards stores frames, q85 for player sheets), so a report of HD
clips stays some MB, not hundreds. No external
script, style or font: the page works offline from file://.
"""
from __future__ import annotations

import dataclasses
import html
import io
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

LOSSLESS_MAX_PIXELS = 640 * 480
JPEG_QUALITY = 95              # stills, for looking at detail
STRIP_QUALITY = 85             # player sheets, for looking at motion: many frames, half the bytes


def spread(n_frames: int, count: int) -> list[int]:
    """`count` frame indices spread over `n_frames` (the middles of equal parts)."""
    return sorted({int((k + 0.5) * n_frames / count) for k in range(count)}) if n_frames > 0 else []


def preview_size(height: int, width: int, max_width: int) -> tuple[int, int]:
    if width <= max_width:
        return height, width
    return max(1, round(height * max_width / width)), max_width


def _zoom(width: int) -> int:
    return max(1, round(256 / width))            # small frames shown larger, as in the rest of the report


def _resized(frame: np.ndarray, height: int, width: int, method: str = "bicubic") -> np.ndarray:
    if frame.shape[:2] == (height, width):
        return frame
    resample = {"nearest": Image.Resampling.NEAREST, "bicubic": Image.Resampling.BICUBIC}[method]
    return np.asarray(Image.fromarray(frame).resize((width, height), resample))


def save_picture(image: np.ndarray, stem: Path, quality: int = JPEG_QUALITY) -> Path:
    """`stem`.png when the picture has at most LOSSLESS_MAX_PIXELS pixels, else `stem`.jpg."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(image)
    buf = io.BytesIO()
    if img.width * img.height <= LOSSLESS_MAX_PIXELS:
        path = stem.with_suffix(".png")
        img.save(buf, format="PNG")
    else:
        path = stem.with_suffix(".jpg")
        img.save(buf, format="JPEG", quality=quality, subsampling=0)
    path.write_bytes(buf.getvalue())
    return path


def clip_fps(paths: Iterable[str | os.PathLike], default: float = 25.0) -> float:
    """Frame rate of the first video file among `paths` (frame folders have none)."""
    from pipelines.common.video import probe

    for p in paths:
        if Path(p).is_file():
            fps = probe(str(p)).fps
            return fps if fps > 0 else default
    return default


@dataclasses.dataclass
class Choice:                  # one source in the before/after selectors
    key: str                   # file-safe, unique: the selectors' value
    label: str
    kind: str                  # "lq", "method" or "gt"
    srcs: dict[int, str]       # frame index -> image, relative to the page


@dataclasses.dataclass
class Strip:                   # one source in the player
    label: str
    src: str
    cols: int
    rows: int


class Comparison:
    """Collects one video's frames source by source; writes the pictures as each source
    closes, and the page's markup at the end."""

    def __init__(self, out_dir: str | os.PathLike, height: int, width: int, n_frames: int, fps: float,
                 stills: int = 3, play_frames: int = 120, play_width: int = 360):
        self.out_dir = Path(out_dir)
        self.height, self.width, self.fps = height, width, fps
        self.at = spread(n_frames, stills)
        self.n_play = min(n_frames, play_frames)
        self.play_h, self.play_w = preview_size(height, width, play_width)
        self.choices: list[Choice] = []
        self.strips: list[Strip] = []
        self._stills: dict[int, np.ndarray] = {}
        self._play: list[np.ndarray] = []

    def add(self, t: int, frame: np.ndarray) -> None:
        if t in self.at:
            self._stills[t] = frame
        if t < self.n_play:
            self._play.append(_resized(frame, self.play_h, self.play_w))

    def close_source(self, name: str, slug: str) -> None:
        """Write the source's stills and strip; `name` "LQ" / "GT" mark the input / the truth."""
        missing = [t for t in self.at if t not in self._stills]
        if missing:
            raise ValueError(f"{name}: has no frame {missing[0]} (compared frames: {self.at})")
        if name == "LQ":
            for method in ("nearest", "bicubic"):
                self._add_choice(f"LQ_{method}", f"LQ, {method}", "lq", method)
            label = "LQ, bicubic"
        else:
            self._add_choice(slug, name, "gt" if name == "GT" else "method", "bicubic")
            label = name
        self.strips.append(self._write_strip(label, slug))
        self._stills, self._play = {}, []

    def _add_choice(self, key: str, label: str, kind: str, method: str) -> None:
        srcs = {}
        for t, frame in sorted(self._stills.items()):
            up = _resized(frame, self.height, self.width, method)
            srcs[t] = self._rel(save_picture(up, self.out_dir / "compare" / f"f{t:04d}" / key))
        self.choices.append(Choice(key, label, kind, srcs))

    def _write_strip(self, label: str, slug: str) -> Strip:
        h, w, n = self.play_h, self.play_w, self.n_play
        cols = max(1, min(n, round(math.sqrt(n * h / w))))       # a roughly square sheet
        rows = math.ceil(n / cols)
        sheet = np.zeros((rows * h, cols * w, 3), np.uint8)      # a short source leaves black cells
        for t, frame in enumerate(self._play):
            r, c = divmod(t, cols)
            sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = frame
        path = save_picture(sheet, self.out_dir / "play" / slug, STRIP_QUALITY)
        return Strip(label, self._rel(path), cols, rows)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.out_dir).as_posix()

    def default_pair(self) -> tuple[Choice, Choice]:
        """(left, right): the first method not called bicubic, against bicubic, else the LQ
        input upscaled bicubic, else GT, else any other source."""
        methods = [c for c in self.choices if c.kind == "method"]
        left = next((c for c in methods if c.label.lower() != "bicubic"), methods[0] if methods else self.choices[0])
        others = [c for c in self.choices if c is not left]
        right = (next((c for c in others if c.kind == "method" and c.label.lower() == "bicubic"), None)
                 or next((c for c in others if c.key == "LQ_bicubic"), None)
                 or next((c for c in others if c.kind == "gt"), None)
                 or (others[0] if others else left))
        return left, right

    def html(self) -> str:
        if not self.choices:
            raise ValueError("Comparison.html: no source was closed")
        return self._slider_html() + self._player_html()

    def _slider_html(self) -> str:
        left, right = self.default_pair()
        gt = next((c for c in self.choices if c.kind == "gt"), None)
        zoom = _zoom(self.width)
        cls = ' class="px"' if zoom > 1 else ""
        pairs = []
        for t in self.at:
            pair = _pair(t, {c.key: c.srcs[t] for c in self.choices}, left, right,
                         self.width * zoom, self.height * zoom, zoom > 1)
            ref = (f'<figure class="ba-ref"><img{cls} src="{html.escape(gt.srcs[t])}" '
                   f'width="{self.width * zoom}" height="{self.height * zoom}" alt="GT, frame {t}">'
                   f"<figcaption>GT, frame {t}</figcaption></figure>") if gt else ""
            pairs.append(f'<div class="grid">{pair}{ref}</div>')
        picks = " ".join(f'{side}: <select class="ba-pick-{which}" aria-label="{side} picture">'
                         + "".join(f'<option value="{html.escape(c.key)}"{" selected" if c is chosen else ""}>'
                                   f"{html.escape(c.label)}</option>" for c in self.choices) + "</select>"
                         for side, which, chosen in (("left", "a", left), ("right", "b", right)))
        return ("<h2>Before / after: full frames</h2>"
                f'<p class="note">Frames {", ".join(map(str, self.at))} at the output size '
                f"{self.width}x{self.height}. Drag across a picture to move the divider; the selectors "
                "choose what is on each side for all frames.</p>"
                f'<section class="compare"><p class="ba-picks">{picks}</p>{"".join(pairs)}</section>')

    def _player_html(self) -> str:
        zoom = _zoom(self.play_w)
        w, h, n = self.play_w * zoom, self.play_h * zoom, self.n_play
        cls = ' class="px"' if zoom > 1 else ""
        strips = "".join(
            f'<figure><div class="strip" style="width:{w}px;height:{h}px"><img{cls} src="{html.escape(s.src)}" '
            f'width="{s.cols * w}" height="{s.rows * h}" data-cols="{s.cols}" data-w="{w}" data-h="{h}" '
            f'alt="{html.escape(s.label)}"></div><figcaption>{html.escape(s.label)}</figcaption></figure>'
            for s in self.strips)
        controls = ('<p class="pl-controls"><button type="button" class="pl-play">play</button> '
                    '<button type="button" class="pl-prev" aria-label="previous frame">&#9664;</button>'
                    '<button type="button" class="pl-next" aria-label="next frame">&#9654;</button> '
                    f'<input type="range" class="pl-scrub" min="0" max="{n - 1}" step="1" value="0" '
                    f'aria-label="frame"> <span class="pl-label">frame 0 / {n - 1}</span></p>')
        return ("<h2>Synchronised playback</h2>"
                f'<p class="note">Frames 0..{n - 1} of every source, {self.play_w}x{self.play_h}, '
                f"at {self.fps:g} fps; one play button and scrubber drive them all, frame by frame.</p>"
                f'<div class="player" data-frames="{n}" data-fps="{self.fps:g}" data-frame="0">'
                f'{controls}<div class="grid">{strips}</div></div>')


def _pair(t: int, srcs: dict[str, str], left: Choice, right: Choice, w: int, h: int, pixelated: bool) -> str:
    """One before/after pair: `right` underneath, `left` on top clipped at the divider."""
    px = " px" if pixelated else ""
    return (f'<figure><div class="ba" data-frame="{t}" data-srcs="{html.escape(json.dumps(srcs))}" '
            f'style="width:{w}px"><img class="ba-b{px}" src="{html.escape(right.srcs[t])}" width="{w}" '
            f'height="{h}" alt="{html.escape(right.label)}, frame {t}"><img class="ba-a{px}" '
            f'src="{html.escape(left.srcs[t])}" width="{w}" height="{h}" alt="{html.escape(left.label)}, '
            f'frame {t}" style="clip-path:inset(0 50% 0 0)"><div class="ba-bar" style="left:50%"></div>'
            f'<span class="ba-tag ba-tag-a">{html.escape(left.label)}</span>'
            f'<span class="ba-tag ba-tag-b">{html.escape(right.label)}</span>'
            '<input type="range" class="ba-range" min="0" max="100" step="0.5" value="50" '
            'aria-label="divider position"></div>'
            f"<figcaption>frame {t}: left | right</figcaption></figure>")


STYLE = """
.ba { position: relative; max-width: 100%; line-height: 0; user-select: none; }
.ba img { display: block; width: 100%; height: auto; }
.ba img.ba-a { position: absolute; left: 0; top: 0; height: 100%; }
.ba-bar { position: absolute; top: 0; bottom: 0; width: 2px; margin-left: -1px; background: #fff;
          box-shadow: 0 0 0 1px rgba(0, 0, 0, 0.6); pointer-events: none; }
.ba-tag { position: absolute; top: 4px; padding: 1px 5px; font-size: 12px; line-height: 1.4;
          background: rgba(0, 0, 0, 0.6); color: #fff; pointer-events: none; }
.ba-tag-a { left: 4px; } .ba-tag-b { right: 4px; }
.ba-range { position: absolute; left: 0; top: 0; width: 100%; height: 100%; margin: 0; opacity: 0;
            cursor: ew-resize; -webkit-appearance: none; appearance: none; }
.ba-range::-webkit-slider-thumb { -webkit-appearance: none; width: 2px; height: 100vh; }
.ba-range::-moz-range-thumb { width: 2px; height: 100vh; border: 0; }
.ba-ref img { max-width: 100%; height: auto; }
.strip { position: relative; overflow: hidden; }
.strip img { position: absolute; left: 0; top: 0; max-width: none; }
.pl-scrub { width: 320px; vertical-align: middle; }
"""

SCRIPT = """
<script>
(function () {
  function each(root, sel, fn) { Array.prototype.forEach.call(root.querySelectorAll(sel), fn); }
  function divide(ba, pct) {
    ba.querySelector('.ba-a').style.clipPath = 'inset(0 ' + (100 - pct) + '% 0 0)';
    ba.querySelector('.ba-bar').style.left = pct + '%';
  }
  function setupCompare(sec) {
    var pickA = sec.querySelector('.ba-pick-a'), pickB = sec.querySelector('.ba-pick-b');
    function show(ba, side, pick, srcs) {
      var label = pick.options[pick.selectedIndex].text, img = ba.querySelector('.ba-' + side);
      img.setAttribute('src', srcs[pick.value]);
      img.setAttribute('alt', label + ', frame ' + ba.getAttribute('data-frame'));
      ba.querySelector('.ba-tag-' + side).textContent = label;
    }
    function choose() {
      each(sec, '.ba', function (ba) {
        var srcs = JSON.parse(ba.getAttribute('data-srcs'));
        show(ba, 'a', pickA, srcs);
        show(ba, 'b', pickB, srcs);
      });
    }
    pickA.addEventListener('change', choose);
    pickB.addEventListener('change', choose);
    each(sec, '.ba', function (ba) {
      var range = ba.querySelector('.ba-range');
      range.addEventListener('input', function () { divide(ba, Number(range.value)); });
      divide(ba, Number(range.value));
    });
    choose();                        // a reload may have restored other selections
  }
  function setupPlayer(p) {
    var n = Number(p.getAttribute('data-frames')), fps = Number(p.getAttribute('data-fps'));
    var button = p.querySelector('.pl-play'), scrub = p.querySelector('.pl-scrub');
    var label = p.querySelector('.pl-label'), t = 0, timer = null;
    function show(k) {               // every strip shows frame k: one index, so lockstep
      t = ((k % n) + n) % n;
      each(p, '.strip img', function (img) {
        var cols = Number(img.getAttribute('data-cols'));
        img.style.left = -(t % cols) * Number(img.getAttribute('data-w')) + 'px';
        img.style.top = -Math.floor(t / cols) * Number(img.getAttribute('data-h')) + 'px';
      });
      scrub.value = String(t);
      label.textContent = 'frame ' + t + ' / ' + (n - 1);
      p.setAttribute('data-frame', String(t));
    }
    function play(on) {
      if (on === (timer !== null)) return;
      if (on) timer = setInterval(function () { show(t + 1); }, 1000 / fps);
      else { clearInterval(timer); timer = null; }
      button.textContent = on ? 'pause' : 'play';
    }
    button.addEventListener('click', function () { play(timer === null); });
    scrub.addEventListener('input', function () { play(false); show(Number(scrub.value)); });
    p.querySelector('.pl-prev').addEventListener('click', function () { play(false); show(t - 1); });
    p.querySelector('.pl-next').addEventListener('click', function () { play(false); show(t + 1); });
    show(0);
  }
  each(document, '.compare', setupCompare);
  each(document, '.player', setupPlayer);
})();
</script>
"""

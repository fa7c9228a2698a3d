"""Evaluation outputs: metric tables (markdown, CSV) and an HTML report people look at.

    rows = [{"method": "student", "video": "000", "frames": 100, "psnr": 24.7, "lpips": "not available: ..."}]
    write_tables(out_dir, "per_video", rows, metric_keys, convention="tecogan")   # per_video.md / .csv
    build_report(out_dir / "report", methods={"bicubic": p1, "student": p2}, gt=gt, lq=lq,
                 tables=[...], convention="tecogan")                             # index.html + PNGs

The report is one static HTML page with relative links to pictures next to it (PNG; JPEG
for the full frames of large videos):
- side-by-side crops at the same frame and place: the LQ input upscaled (nearest and
  bicubic), each method's output, the ground truth when there is one; the crop is the most
  textured window of the reference frame, shown on a thumbnail of the whole frame;
- a temporal profile per video source: one row of every frame stacked top to bottom (an
  x-t slice). A steady picture gives straight or smoothly slanted streaks; flicker and
  jitter show as horizontal banding and ragged streaks;
- full frames (`pipelines.evaluation.report_compare`): a before/after slider on a few frames spread
  over the clip, with selectors for the two sides (LQ upscaled, methods, GT), and every
  source played side by side in lockstep (one play button and scrubber);
- the metric tables, each captioned with the metric convention that produced it.
A small inline script marks `<body data-images-status="ok|broken">` once the page has
loaded, so a headless browser can tell whether every image rendered; it also loads the
pictures the slider's selectors can swap in (`data-srcs`), so they are checked too.

Videos are video files (anything PyAV reads) or folders of frames (PNG/JPEG, sorted by
the numbers in their names, REDS-style); `find_videos` and `iter_video` read both.
"""
from __future__ import annotations

import csv
import html
import io
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipelines.common.tables import markdown_lines
from pipelines.common.video import VIDEO_EXTENSIONS
from pipelines.evaluation import report_compare
from pipelines.evaluation.conventions import METRICS, RANDOM_BACKBONE, get_convention, metric_label

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------- reading videos

def _numeric_key(name: str):
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", name)]


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in `folder`, in natural (numeric) order."""
    folder = Path(folder)
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                  key=lambda p: _numeric_key(p.name))


def find_videos(root: str | os.PathLike) -> dict[str, Path]:
    """{key: path} of every video under `root`: video files (key = relative path without
    extension) and frame folders (key = relative path of the folder). A frame folder's
    subfolders are not searched. `root` may itself be one video file or frame folder."""
    root = Path(root)
    if root.is_file():
        return {root.stem: root}
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    if frame_files(root):
        return {root.name: root}
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        for d in list(dirnames):
            sub = here / d
            if frame_files(sub):
                found[sub.relative_to(root).as_posix()] = sub
                dirnames.remove(d)
        for f in sorted(filenames):
            if f.lower().endswith(VIDEO_EXTENSIONS):
                path = here / f
                key = path.relative_to(root).with_suffix("").as_posix()
                if key in found:
                    raise ValueError(f"{root}: two videos share the key {key!r} ({found[key]} and {path})")
                found[key] = path
    return dict(sorted(found.items(), key=lambda kv: _numeric_key(kv[0])))


def iter_video(path: str | os.PathLike, count: int | None = None) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 RGB frames of a video file or a frame folder, in order."""
    path = Path(path)
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise ValueError(f"{path}: folder holds no frames ({', '.join(IMAGE_EXTENSIONS)})")
        for f in files[:count]:
            with Image.open(f) as im:
                yield np.asarray(im.convert("RGB"))
        return
    from pipelines.common.video import iter_frames

    yield from iter_frames(str(path), count=count)


def count_frames(path: str | os.PathLike) -> int:
    path = Path(path)
    if path.is_dir():
        return len(frame_files(path))
    from pipelines.common.video import probe

    return probe(str(path)).frames


def read_frame(path: str | os.PathLike, index: int) -> np.ndarray:
    path = Path(path)
    if path.is_dir():
        files = frame_files(path)
        if not 0 <= index < len(files):
            raise ValueError(f"{path}: frame {index} out of range (0..{len(files) - 1})")
        with Image.open(files[index]) as im:
            return np.asarray(im.convert("RGB"))
    from pipelines.common.video import iter_frames

    for frame in iter_frames(str(path), start=index, count=1):
        return frame
    raise ValueError(f"{path}: frame {index} out of range")


# --------------------------------------------------------------------------- tables

_DECIMALS = {"psnr": 2, "ssim": 4, "lpips": 4, "dists": 4, "musiq": 2, "maniqa": 4, "clipiqa": 4,
             "niqe": 3, "niqe_frames": 3, "tlpips": 2, "tof": 3, "piqe": 2, "ewarp": 3}


def format_value(key: str, value) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    v = float(value)
    if math.isinf(v) or math.isnan(v):
        return str(v)
    base = key.removesuffix(RANDOM_BACKBONE)
    return f"{v:.{_DECIMALS.get(base, 4)}f}"


def _header(key: str, convention: str) -> str:
    base = key.removesuffix(RANDOM_BACKBONE)
    return metric_label(key, convention) if base in METRICS else key


def convention_caption(convention: str) -> str:
    return f"Metric convention: {get_convention(convention).describe()}"


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str], convention: str,
                   title: str | None = None, notes: Sequence[str] = (), about: str = "") -> str:
    """A markdown table whose caption names the metric convention; `about` (what was
    evaluated) is quoted above it."""
    lines = [f"## {title}", ""] if title else []
    if about:
        lines += [f"> {about}", ""]
    lines += [f"*{convention_caption(convention)}*", ""]
    lines += markdown_lines([_header(c, convention) for c in columns],
                            [[format_value(c, r.get(c, "")) for c in columns] for r in rows])
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_tables(out_dir: str | os.PathLike, stem: str, rows: Sequence[Mapping], columns: Sequence[str],
                 convention: str, title: str | None = None, notes: Sequence[str] = (),
                 about: str = "") -> tuple[Path, Path]:
    """`<stem>.md` (formatted, captioned) and `<stem>.csv` (full precision, with a
    `convention` column so the file alone says how it was measured)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{stem}.md"
    md.write_text(markdown_table(rows, columns, convention, title, notes, about))
    path_csv = out_dir / f"{stem}.csv"
    with open(path_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["convention", *columns])
        for r in rows:
            writer.writerow([convention, *[r.get(c, "") for c in columns]])
    return md, path_csv


def html_table(rows: Sequence[Mapping], columns: Sequence[str], convention: str, caption: str) -> str:
    head = "".join(f"<th>{html.escape(_header(c, convention))}</th>" for c in columns)
    body = []
    metric_cols = _metric_keys(columns)
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            text = html.escape(format_value(c, v))
            cells.append(f'<td class="na">{text}</td>' if isinstance(v, str) and c in metric_cols
                         else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"{html.escape(caption)}<br><small>{html.escape(convention_caption(convention))}</small>"
    return (f'<table data-convention="{html.escape(convention)}"><caption>{cap}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _metric_keys(columns: Sequence[str]) -> set[str]:
    return {c for c in columns if c in METRICS or c.endswith(RANDOM_BACKBONE)}


# --------------------------------------------------------------------------- pictures

def best_crop_box(frame: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """(y, x, h, w) of the `size` x `size` window (clipped to the frame) with the most
    gradient energy on a coarse grid: where restoration differences show."""
    h, w = frame.shape[:2]
    ch, cw = min(size, h), min(size, w)
    g = frame.astype(np.float32).mean(axis=2)
    energy = np.zeros_like(g)
    energy[:, 1:] += np.abs(np.diff(g, axis=1))
    energy[1:, :] += np.abs(np.diff(g, axis=0))
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    step_y, step_x = max(1, (h - ch) // 8), max(1, (w - cw) // 8)
    best, box = -1.0, (0, 0, ch, cw)
    for y in range(0, h - ch + 1, step_y):
        for x in range(0, w - cw + 1, step_x):
            s = integral[y + ch, x + cw] - integral[y, x + cw] - integral[y + ch, x] + integral[y, x]
            if s > best:
                best, box = float(s), (y, x, ch, cw)
    return box


def resize(frame: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    resample = {"nearest": Image.Resampling.NEAREST, "bicubic": Image.Resampling.BICUBIC}[method]
    if frame.shape[:2] == (height, width):
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), resample))


def xt_profile(frames, row: int, height: int | None = None, width: int | None = None) -> np.ndarray:
    """(T, W, 3) uint8: row `row` (in a `height`-tall frame's coordinates) of every frame.
    Frames of another size (the LQ input) are sampled at the matching row and their rows
    stretched to `width` with nearest neighbour."""
    rows = []
    for f in frames:
        fh, fw = f.shape[:2]
        r = row if height is None else min(fh - 1, int(row * fh / height))
        line = f[r]
        if width is not None and fw != width:
            line = np.asarray(Image.fromarray(line[None]).resize((width, 1), Image.Resampling.NEAREST))[0]
        rows.append(line)
    if not rows:
        raise ValueError("xt_profile: no frames")
    return np.stack(rows)


def _save_png(image: np.ndarray | Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")
    return s or "x"


# --------------------------------------------------------------------------- the page

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 12px 0; font-size: 0.9em; background: white; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
caption small { font-weight: normal; color: #555; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #eee; } td:first-child, td:nth-child(2) { text-align: left; }
td.na { color: #999; font-style: italic; font-size: 0.85em; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; background: white; border: 1px solid #ddd; padding: 4px; }
figcaption { font-size: 0.85em; padding-top: 3px; max-width: 320px; }
img.px { image-rendering: pixelated; }
.note { color: #555; font-size: 0.9em; }
.about { background: #fff6d6; border: 1px solid #e0c060; padding: 8px 12px; max-width: 900px; }
"""

_LOAD_CHECK = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var seen = imgs.map(function (im) { return im.getAttribute('src'); }), extra = [];
  Array.prototype.forEach.call(document.querySelectorAll('[data-srcs]'), function (el) {
    var srcs = JSON.parse(el.getAttribute('data-srcs'));
    Object.keys(srcs).forEach(function (k) {
      if (seen.indexOf(srcs[k]) < 0) { seen.push(srcs[k]); extra.push(srcs[k]); }
    });
  });
  var pending = extra.length;
  var probes = extra.map(function (src) {      // pictures a selector can swap in
    var im = new Image();
    im.onload = im.onerror = function () { if (--pending === 0) mark(); };
    im.src = src;
    return im;
  });
  if (!pending) mark();
  function mark() {
    var all = imgs.concat(probes);
    var bad = all.filter(function (im) { return !(im.complete && im.naturalWidth > 0); });
    document.body.setAttribute('data-images-total', String(all.length));
    document.body.setAttribute('data-images-loaded', String(all.length - bad.length));
    document.body.setAttribute('data-images-status', bad.length ? 'broken' : 'ok');
    if (bad.length) {
      document.body.setAttribute('data-images-broken',
        bad.map(function (im) { return im.getAttribute('src'); }).join(' '));
    }
    document.title = (bad.length ? '[images broken] ' : '[images ok] ') + document.title;
  }
});
</script>
"""


def _figure(src: str, caption: str, width: int, pixelated: bool = True, height: int | None = None) -> str:
    cls = ' class="px"' if pixelated else ""
    size = f' width="{width}"' + (f' height="{height}"' if height else "")
    return (f'<figure><img{cls} src="{html.escape(src)}"{size} alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def build_report(out_dir: str | os.PathLike, methods: Mapping[str, str | os.PathLike], *,
                 convention: str, gt: str | os.PathLike | None = None, lq: str | os.PathLike | None = None,
                 tables: Sequence[tuple[str, Sequence[Mapping], Sequence[str]]] = (),
                 title: str = "d2vr evaluation", video_key: str = "", frame_index: int | None = None,
                 crop_size: int = 128, notes: Sequence[str] = (), max_frames: int | None = None,
                 about: str = "") -> Path:
    """Write `out_dir/index.html` and its pictures for one video shown by every method.

    `about`: what was evaluated, shown first in a box (e.g. "tiny demo models, trained for
    minutes"): a reader must not take a demo's numbers for the method's.

    `methods`: name -> that method's restored video (file or frame folder) for the shown
    video; `gt`/`lq`: the same video's ground truth / low-quality input, if any.
    `tables`: (caption, rows, columns) shown under the pictures.
    """
    if not methods:
        raise ValueError("build_report needs at least one method")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    get_convention(convention)
    ref_name, ref_path = ("GT", gt) if gt is not None else next(iter(methods.items()))
    n_frames = count_frames(ref_path)
    if max_frames is not None:
        n_frames = min(n_frames, max_frames)
    index = n_frames // 2 if frame_index is None else frame_index
    if not 0 <= index < n_frames:
        raise ValueError(f"frame_index {index} out of range for {ref_path} ({n_frames} frames)")
    ref_frame = read_frame(ref_path, index)
    H, W = ref_frame.shape[:2]
    y, x, ch, cw = best_crop_box(ref_frame, crop_size)
    row = y + ch // 2
    scale_view = max(1, round(256 / max(ch, cw)))   # crops shown at least ~256 px

    # sources in display order: LQ, methods, GT
    clash = [n for n in methods if n.upper() in ("LQ", "GT")]
    if clash:
        raise ValueError(f"method names {clash} clash with the report's LQ/GT panels: rename them")
    sources: list[tuple[str, Path]] = []
    if lq is not None:
        sources.append(("LQ", Path(lq)))
    sources += [(name, Path(p)) for name, p in methods.items()]
    if gt is not None:
        sources.append(("GT", Path(gt)))

    fps = report_compare.clip_fps([ref_path, *(p for _, p in sources)])
    compare = report_compare.Comparison(out_dir, H, W, n_frames, fps=fps)
    crops_html, profiles_html = [], []
    used_slugs: set[str] = set()
    for name, path in sources:
        slug = _slug(name)
        while slug in used_slugs or slug.startswith("LQ_"):
            slug = "m_" + slug
        used_slugs.add(slug)
        frames_at, profile_rows = None, []
        for t, frame in enumerate(iter_video(path, count=n_frames)):
            if t == index:
                frames_at = frame
            compare.add(t, frame)
            profile_rows.append(xt_profile([frame], row, H, W)[0])   # one row per frame kept
        if frames_at is None:
            raise ValueError(f"{path}: has no frame {index}")
        compare.close_source(name, slug)
        if name == "LQ":
            for method in ("nearest", "bicubic"):
                up = resize(frames_at, H, W, method)
                _save_png(up[y:y + ch, x:x + cw], out_dir / "crops" / f"LQ_{method}.png")
                lh, lw = frames_at.shape[:2]
                crops_html.append(_figure(f"crops/LQ_{method}.png", f"LQ {lw}x{lh}, {method} x{W / lw:g}",
                                          cw * scale_view))
        else:
            note = ""
            if frames_at.shape[:2] != (H, W):
                note = f" (resized from {frames_at.shape[1]}x{frames_at.shape[0]})"
                frames_at = resize(frames_at, H, W, "bicubic")
            _save_png(frames_at[y:y + ch, x:x + cw], out_dir / "crops" / f"{slug}.png")
            crops_html.append(_figure(f"crops/{slug}.png", f"{name}{note}", cw * scale_view))
        profile = np.stack(profile_rows)
        _save_png(profile, out_dir / "profiles" / f"{slug}.png")
        zoom = max(1, round(256 / W))                          # small frames shown larger
        per_frame = max(zoom, math.ceil(96 / len(profile_rows)))  # short clips: taller rows
        profiles_html.append(_figure(f"profiles/{slug}.png",
                                     f"{name}: row {row}, frames 0..{len(profile_rows) - 1} top to bottom",
                                     W * zoom, pixelated=True, height=len(profile_rows) * per_frame))

    thumb = Image.fromarray(ref_frame).convert("RGB")
    draw = ImageDraw.Draw(thumb)
    draw.rectangle([x, y, x + cw - 1, y + ch - 1], outline=(255, 40, 40), width=max(1, W // 320))
    draw.line([(0, row), (W - 1, row)], fill=(40, 160, 255), width=1)
    _save_png(thumb, out_dir / "frame.png")

    conv = get_convention(convention)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}{report_compare.STYLE}</style></head>",
        f'<body data-convention="{html.escape(convention)}">',
        f"<h1>{html.escape(title)}</h1>",
        *([f'<p class="about">{html.escape(about)}</p>'] if about else []),
        f'<p class="note"><b>Metric convention:</b> {html.escape(conv.describe())}</p>',
    ]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    parts.append(f"<h2>Crops: video {html.escape(video_key or Path(ref_path).name)}, frame {index}</h2>")
    parts.append('<div class="grid">' + _figure("frame.png", f"{ref_name} frame {index}: crop (red) at "
                                                 f"x={x}, y={y}, {cw}x{ch}; profile row {row} (blue)",
                                                 W * max(1, round(256 / W)) if W < 256 else min(W, 640),
                                                 pixelated=W < 256) + "</div>")
    parts.append('<div class="grid">' + "".join(crops_html) + "</div>")
    parts.append(compare.html())
    parts.append("<h2>Temporal profiles (x-t slices)</h2>")
    parts.append('<p class="note">One image row per frame, time going down. Smooth streaks: '
                 'temporally stable; horizontal banding or ragged streaks: flicker / jitter.</p>')
    parts.append('<div class="grid">' + "".join(profiles_html) + "</div>")
    if tables:
        parts.append("<h2>Metrics</h2>")
        for caption, rows, columns in tables:
            parts.append(html_table(rows, columns, convention, caption))
    parts.append(report_compare.SCRIPT)
    parts.append(_LOAD_CHECK)
    parts.append("</body></html>")
    page = out_dir / "index.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page

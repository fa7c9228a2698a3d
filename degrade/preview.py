"""Look at the chain: a labelled contact sheet of one clip through every stage, and a flow pair.

    python -m degrade.preview INPUT --preset heavy --out sheet.png

INPUT is a video (a few frames are read with PyAV) or an image. Row 1: the clean frame and
the frame after each stage (stage1, stage2, final LQ, codec), small ones upscaled with
nearest neighbour so pixels stay visible, with what each stage did. Row 2: a synthetic flow
pair (frame 1, frame 2, colour-coded flow, valid mask, |warp(frame2) - frame1|) and the
pair after the same preset at scale 1.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from degrade.chain import degrade_clip
from degrade.config import PRESETS, preset
from degrade.flowpairs import FlowPairConfig, degrade_flow_pair, make_flow_pair
from degrade.ops import to_uint8
from models.flow.warp import backward_warp, flow_to_color

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def read_frames(path: str, count: int, start: int = 0, max_side: int = 640) -> torch.Tensor:
    """(T, 3, H, W) float in [0, 1]: `count` frames from `start` of a video, or one image."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{path}: file not found")
    if p.suffix.lower() in IMAGE_SUFFIXES:
        arrays = [np.asarray(Image.open(p).convert("RGB"))]
    else:
        import av

        arrays = []
        try:
            with av.open(str(p)) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if i >= start:
                        arrays.append(frame.to_ndarray(format="rgb24"))
                    if len(arrays) == count:
                        break
        except av.error.FFmpegError as exc:
            raise ValueError(f"{path}: not a readable video ({exc})") from exc
        if not arrays:
            raise ValueError(f"{path}: no frame decoded")
    clip = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    f = max_side / max(clip.shape[-2:])
    if f < 1:
        size = (round(clip.shape[-2] * f), round(clip.shape[-1] * f))
        clip = torch.nn.functional.interpolate(clip, size=size, mode="area")
    return clip


def describe(ops: list[dict], codec: dict | None = None) -> str:
    """A short human summary of a stage's ops (first-frame values)."""
    parts = []
    for o in ops:
        if o["op"] == "blur":
            if o["type"] == "sinc":
                parts.append(f"sinc k{o['size']} w{o['omega'][0]:.2f}")
            else:
                parts.append(f"{o['type']} k{o['size']} s{o['sigma_x'][0]:.1f}")
        elif o["op"] == "resize":
            parts.append(f"{o['mode']} {o['size'][1]}x{o['size'][0]}")
        elif o["op"] == "noise":
            level = o["sigma"][0] if o["kind"] == "gaussian" else o["scale"][0]
            parts.append(f"{'grey ' if o['gray'] else ''}{o['kind']} {level:.2f}")
        elif o["op"] == "jpeg":
            parts.append(f"jpeg q{o['quality'][0]}")
    if codec:
        rate = (f"{codec['bitrate'] / 1000:.0f} kb/s" if "bitrate" in codec
                else f"crf {codec['crf']}" if "crf" in codec else f"q {codec['qscale']}")
        parts.append(f"{codec['codec']} {rate}")
    return ", ".join(parts) or "nothing"


def sheet(tiles: list[tuple[str, np.ndarray]], columns: int, tile_w: int) -> Image.Image:
    """Labelled grid; tiles smaller than the cell are upscaled with nearest neighbour."""
    label_h = 28
    scaled = []
    for label, img in tiles:
        pil = Image.fromarray(img)
        h = max(1, round(pil.height * tile_w / pil.width))
        resample = Image.Resampling.NEAREST if pil.width < tile_w else Image.Resampling.LANCZOS
        scaled.append((label, pil.resize((tile_w, h), resample)))
    cell_h = max(im.height for _, im in scaled) + label_h
    rows = math.ceil(len(scaled) / columns)
    out = Image.new("RGB", (columns * tile_w, rows * cell_h), (20, 20, 20))
    draw = ImageDraw.Draw(out)
    for i, (label, im) in enumerate(scaled):
        x, y = (i % columns) * tile_w, (i // columns) * cell_h
        out.paste(im, (x, y + label_h))
        for j, line in enumerate(label.split("\n")[:2]):
            draw.text((x + 3, y + 2 + 12 * j), line[: tile_w // 6], fill=(235, 235, 235))
    return out


def build_sheet(clip: torch.Tensor, preset_name: str, scale: int, seed: int, tile_w: int = 320) -> Image.Image:
    rng = np.random.default_rng(seed)
    cfg = preset(preset_name, scale=scale)
    stages: dict[str, torch.Tensor] = {}
    lq, record = degrade_clip(clip, cfg, rng, capture=lambda name, x: stages.__setitem__(name, x[0, 0].clone()))
    h, w = clip.shape[-2:]
    tiles = [(f"clean {w}x{h}\n{len(clip)} frames, preset {preset_name} x{scale}", to_uint8(clip[0]))]
    for name in ("stage1", "stage2", "final", "codec"):
        if name in stages:
            ops = [o for o in record["ops"] if o["stage"] == name]
            img = stages[name]
            label = f"{name} ({img.shape[-1]}x{img.shape[-2]})\n"
            label += describe(ops, record["codec"] if name == "codec" else None)
            tiles.append((label, to_uint8(img)))
    tiles.append((f"final LQ {lq.shape[-1]}x{lq.shape[-2]} (nearest x{scale})", to_uint8(lq[0])))
    # Flow pair from the first frame; layers cut from the last one turned upside down, so
    # that they differ from the background they move over.
    other = clip[-1].flip(-2).flip(-1)
    img1, img2, flow, valid = make_flow_pair(clip[0], other, FlowPairConfig(), rng)
    warp_err = (backward_warp(img2[None], flow[None])[0] - img1).abs().mean(0)
    mae = float(warp_err[valid].mean()) if valid.any() else float("nan")
    d1, d2, _, _, rec2 = degrade_flow_pair(img1, img2, flow, valid, preset(preset_name, scale=1), rng)
    err_img = (warp_err.clamp(0, 0.25) * 4 * valid.float())[None].expand(3, -1, -1)
    tiles += [
        ("flow pair: frame 1", to_uint8(img1)),
        ("flow pair: frame 2", to_uint8(img2)),
        (f"flow 1->2 (max {float(flow.norm(dim=0).max()):.1f} px)", flow_to_color(flow)),
        (f"valid (white) {float(valid.float().mean()) * 100:.0f}%", to_uint8(valid.float()[None].expand(3, -1, -1))),
        (f"|warp(f2)-f1| x4 on valid\nMAE {mae:.4f}", to_uint8(err_img)),
        (f"frame 1, {preset_name} x1\n{describe(rec2['ops'], rec2['codec'])}", to_uint8(d1)),
        (f"frame 2, {preset_name} x1", to_uint8(d2)),
    ]
    return sheet(tiles, columns=4 if len(tiles) <= 12 else 5, tile_w=tile_w)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", help="video or image file")
    ap.add_argument("--preset", default="heavy", choices=PRESETS)
    ap.add_argument("--scale", type=int, default=4, help="down-scaling factor (default 4)")
    ap.add_argument("--frames", type=int, default=6, help="frames read from a video (default 6)")
    ap.add_argument("--start", type=int, default=0, help="first frame read (default 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="PNG path of the contact sheet")
    args = ap.parse_args(argv)
    clip = read_frames(args.input, args.frames, args.start)
    image = build_sheet(clip, args.preset, args.scale, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.out} ({image.width}x{image.height})")


if __name__ == "__main__":
    main()

"""Contact sheets: a labelled grid of frames in one PNG, for people to look at."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def contact_sheet(tiles: list[tuple[str, np.ndarray]], columns: int = 4, tile_width: int = 320) -> Image.Image:
    """`tiles`: (label, (H, W, 3) uint8). Each tile is resized to `tile_width` wide."""
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    resized = []
    for label, img in tiles:
        pil = Image.fromarray(img)
        h = max(1, round(pil.height * tile_width / pil.width))
        resized.append((label, pil.resize((tile_width, h), Image.Resampling.NEAREST
                                          if pil.width < tile_width // 2 else Image.Resampling.BICUBIC)))
    label_h = 16
    cell_h = max(im.height for _, im in resized) + label_h
    rows = (len(resized) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile_width, rows * cell_h), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, (label, im) in enumerate(resized):
        x, y = (i % columns) * tile_width, (i // columns) * cell_h
        sheet.paste(im, (x, y + label_h))
        draw.text((x + 4, y + 2), label, fill=(235, 235, 235))
    return sheet


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()

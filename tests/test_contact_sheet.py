"""pipelines.evaluation.contact_sheet: a labelled grid whose every tile holds its picture."""
from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image

from pipelines.evaluation.contact_sheet import contact_sheet, png_bytes


def test_every_tile_holds_its_picture():
    photo = skimage.data.astronaut()[:160, :200]
    tiles = [("astronaut", photo), ("flipped", photo[:, ::-1]), ("small", photo[::4, ::4])]
    sheet = np.asarray(contact_sheet(tiles, columns=2, tile_width=100))
    cell_h = 16 + 80                                          # label + 160 px scaled to 100 wide
    assert sheet.shape == (2 * cell_h, 2 * 100, 3)
    for i, (_, img) in enumerate(tiles):
        x, y = (i % 2) * 100, (i // 2) * cell_h
        picture = sheet[y + 16:y + cell_h, x:x + 100].astype(float)
        want = np.asarray(Image.fromarray(img).resize((100, 80), Image.Resampling.BICUBIC), dtype=float)
        assert picture.std() > 20, f"tile {i} is blank"
        assert np.abs(picture - want).mean() < 12, f"tile {i} is not its picture"
    empty = sheet[cell_h + 16:, 100:].astype(float)           # the fourth cell: background only
    assert empty.std() == 0
    assert Image.open(io.BytesIO(png_bytes(contact_sheet(tiles)))).size == (4 * 320, 16 + 256)


def test_no_tiles_is_an_error():
    with pytest.raises(ValueError, match="at least one tile"):
        contact_sheet([])

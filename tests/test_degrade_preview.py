"""degrade.preview: the contact sheet renders for an image and for a real video."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image

from degrade import preview


def assert_first_row_drawn(sheet: np.ndarray, tile_w: int = 320, label_h: int = 28) -> None:
    """Every cell of the first row holds a picture below its label (the first 100 px rows of
    it are not the flat background): fails on a blank canvas, labels or not."""
    for x in range(0, sheet.shape[1], tile_w):
        picture = sheet[label_h:label_h + 100, x:x + tile_w].astype(float)
        assert picture.std() > 10, f"the tile at x={x} is blank"


def test_sheet_from_an_image(tmp_path):
    src = tmp_path / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()[:200, :240]).save(src)
    out = tmp_path / "sheet.png"
    preview.main([str(src), "--preset", "medium", "--scale", "2", "--out", str(out)])
    sheet = np.asarray(Image.open(out))
    assert sheet.shape[1] == 4 * 320 and sheet.shape[0] >= 3 * 240
    assert sheet.std() > 20                     # tiles were drawn, not an empty canvas
    assert_first_row_drawn(sheet)


def test_sheet_from_the_sample_video(tmp_path, bikes_video):
    out = tmp_path / "bikes.png"
    preview.main([bikes_video, "--preset", "heavy", "--frames", "3", "--out", str(out)])
    sheet = Image.open(out)
    assert sheet.width in (4 * 320, 5 * 320) and sheet.height > 400
    assert_first_row_drawn(np.asarray(sheet.convert("RGB")))


def test_describe_and_bad_input(tmp_path):
    text = preview.describe([{"op": "jpeg", "quality": [40]}, {"op": "resize", "size": [10, 20], "mode": "area"}],
                            {"codec": "libx264", "crf": 30})
    assert text == "jpeg q40, area 20x10, libx264 crf 30"
    with pytest.raises(ValueError, match="not found"):
        preview.read_frames(str(tmp_path / "missing.mp4"), 2)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(ValueError, match="not a readable video"):
        preview.read_frames(str(bad), 2)

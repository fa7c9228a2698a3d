"""pipelines.common.video: probe, streaming decode, encode with audio, and typed errors."""
from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from pipelines.common import video
from pipelines.common.samples import sample_video
from tests.media import corrupt_file, textured_frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def test_probe_real_sample():
    info = video.probe(sample_video("bikes"))
    assert (info.width, info.height, info.frames, info.fps) == (640, 272, 250, 25.0)
    assert info.codec == "h264" and not info.has_audio and info.rotation == 0
    bunny = video.probe(sample_video("bigbuckbunny"))
    assert bunny.has_audio and bunny.audio_codec == "aac" and bunny.frames == 132


def test_encode_decode_roundtrip_crf18(tmp_path):
    src = sample_video("carphone")
    info = video.probe(src)
    frames = video.read_frames(src)
    out = str(tmp_path / "sub" / "carphone_crf18.mp4")
    n = video.write_video(out, frames, fps=info.fps_fraction, crf=18)
    back = video.probe(out)
    assert n == back.frames == info.frames == len(frames)
    assert fractions.Fraction(back.fps_fraction) == fractions.Fraction(info.fps_fraction)
    decoded = video.read_frames(out)
    value = psnr(frames, decoded)
    assert value > 35.0, f"PSNR {value:.2f} dB at CRF 18"


def test_streaming_decode_in_chunks_matches_whole_decode():
    src = sample_video("carphone")
    whole = video.read_frames(src, start=10, count=37)
    chunks = list(video.iter_chunks(src, chunk=16, start=10, count=37))
    assert [len(c) for c in chunks] == [16, 16, 5]
    np.testing.assert_array_equal(np.concatenate(chunks), whole)


def test_audio_is_carried_over(tmp_path):
    src = sample_video("bigbuckbunny")
    frames = (video.to_uint8(video.to_float(f)[None])[0] for f in video.iter_frames(src, count=40))
    small = (f[::8, ::8] for f in frames)
    out = str(tmp_path / "with_audio.mp4")
    video.write_video(out, small, fps=25, crf=23, audio_from=src, preset="ultrafast")
    info = video.probe(out)
    assert info.has_audio and info.audio_codec == "aac" and info.frames == 40
    with av.open(src) as a, av.open(out) as b:
        pa = [bytes(p) for p in a.demux(a.streams.audio[0]) if p.size][:20]
        pb = [bytes(p) for p in b.demux(b.streams.audio[0]) if p.size][:20]
    assert pa == pb, "audio packets were re-encoded or altered"


def test_odd_size_keeps_exact_dimensions(tmp_path):
    frames = textured_frames(6, 51, 77)
    out = str(tmp_path / "odd.mp4")
    video.write_video(out, frames, fps=24, crf=10)
    info = video.probe(out)
    assert (info.width, info.height, info.frames) == (77, 51, 6)
    assert psnr(frames, video.read_frames(out)) > 35


def test_rotation_metadata_is_applied(tmp_path):
    frames = textured_frames(4, 48, 80)
    path = str(tmp_path / "rotated.mp4")
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 80, 48, "yuv420p"
        s.options = {"crf": "10"}
        s.set_display_rotation(90)  # must precede the header, written at the first mux
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    info = video.probe(path)
    assert info.rotation == 90 and (info.width, info.height) == (48, 80)
    decoded = video.read_frames(path)
    assert decoded.shape == (4, 80, 48, 3)
    upright = psnr(np.rot90(frames, k=1, axes=(1, 2)), decoded)
    upside_down = psnr(np.rot90(frames, k=3, axes=(1, 2)), decoded)
    assert upright > 25 and upright > upside_down + 5, (upright, upside_down)


def test_variable_frame_rate_is_detected_and_every_frame_decoded(tmp_path):
    frames = textured_frames(12, 32, 32)
    path = str(tmp_path / "vfr.mkv")
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=1000)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        s.time_base = fractions.Fraction(1, 1000)
        pts = np.cumsum([0] + [40 if i % 2 else 20 for i in range(11)])
        for f, t in zip(frames, pts):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = int(t), fractions.Fraction(1, 1000)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    info = video.probe(path)
    assert info.variable_frame_rate and info.frames == 12
    assert len(video.read_frames(path)) == 12


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated", "text", "missing"])
def test_bad_files_raise_video_error_naming_the_file(kind, tmp_path):
    path = str(tmp_path / f"bad_{kind}.mp4")
    if kind != "missing":
        corrupt_file(path, kind, source=sample_video("bikes"))
    with pytest.raises(video.VideoError) as err:
        info = video.probe(path)
        list(video.iter_frames(path, expected=info.frames))
    assert path in str(err.value) and err.value.reason


def test_failed_encode_leaves_nothing(tmp_path):
    out = tmp_path / "never.mp4"
    with pytest.raises(RuntimeError):
        with video.VideoWriter(str(out), fps=25) as w:
            w.write(textured_frames(1, 32, 32)[0])
            raise RuntimeError("stop")
    assert not out.exists()
    with pytest.raises(ValueError, match="uint8"):
        with video.VideoWriter(str(out), fps=25) as w:
            w.write(np.zeros((8, 8, 3), np.float32))
    assert not out.exists()


def _reencode(src: str, dst: str, codec: str, **options) -> str:
    """A sample video re-encoded with another codec / container / GOP (PyAV, as FFmpeg would)."""
    frames = video.read_frames(src, 0, 60)
    with av.open(dst, "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height = frames.shape[2] // 2 * 2, frames.shape[1] // 2 * 2
        stream.pix_fmt = "yuv420p"
        stream.options = {k: str(v) for k, v in options.items()}
        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:stream.height, :stream.width]), format="rgb24")
            for p in stream.encode(vf):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
    return dst


@pytest.mark.parametrize("kind", ["bikes", "bigbuckbunny", "carphone", "mkv_h264_gop10_bframes", "avi_mpeg4",
                                  "webm_vp9", "vfr"])
def test_seeking_to_a_frame_gives_the_frames_of_a_decode_from_the_start(kind, tmp_path):
    if kind in ("bikes", "bigbuckbunny", "carphone"):
        path = sample_video(kind)
    elif kind == "mkv_h264_gop10_bframes":
        path = _reencode(sample_video("bikes"), str(tmp_path / "v.mkv"), "libx264", g=10, bf=3, preset="ultrafast")
    elif kind == "avi_mpeg4":
        path = _reencode(sample_video("bikes"), str(tmp_path / "v.avi"), "mpeg4", g=12)
    elif kind == "webm_vp9":
        path = _reencode(sample_video("carphone"), str(tmp_path / "v.webm"), "libvpx-vp9", g=15, deadline="realtime")
    else:
        path = str(tmp_path / "vfr.mkv")
        test_variable_frame_rate_is_detected_and_every_frame_decoded(tmp_path)   # writes vfr.mkv
    whole = video.read_frames(path)
    n = len(whole)
    for start in sorted({1, min(11, n - 3), n // 2, n - 2}):
        assert np.array_equal(video.read_frames(path, start, 4), whole[start:start + 4]), (kind, start)
    # and it seeks (decodes from near frame start, not from frame 0) where time stamps allow
    container = av.open(path)
    first_index = next(video._decoded(container, container.streams.video[0], n - 2))[0]
    container.close()
    assert first_index == n - 2

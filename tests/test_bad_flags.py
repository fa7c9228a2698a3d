"""Bad flags (#17 item 4): one line naming the flag, exit 2, nothing created, before Ray starts."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

JOBS = str(Path(__file__).resolve().parents[1] / "jobs")


@pytest.fixture()
def jobs(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(JOBS)              # the jobs' `_bootstrap` sibling
    monkeypatch.chdir(tmp_path)
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started before the flags were checked")

    monkeypatch.setattr(ray, "init", no_ray)
    from jobs import build_shards, restore

    return {"restore": restore.main, "build_shards": build_shards.main}


def run_bad(jobs, capsys, tmp_path, job, argv, flag):
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as exit_:
        jobs[job](argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"error: {flag}" in err, err
    assert sorted(os.listdir(tmp_path)) == before, "something was created"
    return err


@pytest.mark.parametrize("argv, flag", [
    (["--concurrency", "0"], "--concurrency"), (["--concurrency", "-3"], "--concurrency"),
    (["--crf", "100"], "--crf"), (["--num-cpus", "0"], "--num-cpus"),
    (["--progress-every-s", "0"], "--progress-every-s"), (["--dtype", "fp8"], "--dtype"),
    (["--tile", "16", "--tile-overlap", "32"], "--tile"),
])
def test_restore_rejects_out_of_range_flags(jobs, capsys, tmp_path, argv, flag):
    (tmp_path / "src").mkdir()
    run_bad(jobs, capsys, tmp_path, "restore", ["--src", "src", "--dst", "out", *argv], flag)


def test_restore_path_errors_are_one_line(jobs, capsys, tmp_path):
    run_bad(jobs, capsys, tmp_path, "restore", ["--src", "missing", "--dst", "out"], "--src")
    run_bad(jobs, capsys, tmp_path, "restore", ["--dst", "out"], "--src")


@pytest.mark.parametrize("argv, flag", [
    (["--threshold", "-1"], "--threshold"), (["--min-shot-len", "-1"], "--min-shot-len"),
    (["--max-videos", "-5"], "--max-videos"), (["--short-side", "-5"], "--short-side"),
    (["--concurrency", "0"], "--concurrency"),
])
def test_build_shards_rejects_out_of_range_flags(jobs, capsys, tmp_path, argv, flag):
    (tmp_path / "src").mkdir()
    run_bad(jobs, capsys, tmp_path, "build_shards", ["--src", "src", "--dst", "out", *argv], flag)


def test_build_shards_checks_paths_before_ray_and_before_build_json(jobs, capsys, tmp_path):
    run_bad(jobs, capsys, tmp_path, "build_shards", ["--src", "missing", "--dst", "out"], "--src")
    run_bad(jobs, capsys, tmp_path, "build_shards", ["--dst", "out"], "--src")
    (tmp_path / "src").mkdir()
    before = sorted(os.listdir(tmp_path / "src"))
    run_bad(jobs, capsys, tmp_path, "build_shards", ["--src", "src", "--dst", "src"], "--dst")
    run_bad(jobs, capsys, tmp_path, "build_shards", ["--src", "src", "--dst", "src/shards"], "--dst")
    run_bad(jobs, capsys, tmp_path, "build_shards", ["--src", "src/", "--dst", str(tmp_path / "src" / "x")], "--dst")
    assert sorted(os.listdir(tmp_path / "src")) == before


@pytest.mark.parametrize("argv, flag", [
    (["--codec", "nosuchcodec"], "--codec"), (["--codec", "aac"], "--codec"),
    (["--preset", "bogus"], "--preset"), (["--pix-fmt", "rgb24"], "--pix-fmt"),
    (["--container", "zzz"], "--container"),
])
def test_restore_checks_the_encoder_before_any_video(jobs, capsys, tmp_path, argv, flag):
    (tmp_path / "src").mkdir()
    run_bad(jobs, capsys, tmp_path, "restore", ["--src", "src", "--dst", "out", *argv], flag)


def test_restore_exits_non_zero_when_no_video_could_be_done_for_a_setup_reason(jobs, capsys, tmp_path, monkeypatch):
    from pipelines.common import video
    from pipelines.restore import archive
    from pipelines.restore.stream import empty_row
    from tests.media import textured_frames

    (tmp_path / "src").mkdir()
    video.write_video(str(tmp_path / "src" / "a.mp4"), textured_frames(2, 32, 48), fps=25, crf=0, preset="ultrafast")

    def broken(items, restorer, cfg, **kw):
        rows = [empty_row(i["source"], i["output"], i["relpath"], i["source_size"], cfg.model) for i in items]
        for row in rows:
            row.update(error="RuntimeError: CUDA error: no kernel image", error_kind="internal")
        return rows

    monkeypatch.setattr(archive, "restore_items", broken)
    assert jobs["restore"](["--src", "src", "--dst", "out", "--no-ray", "--tile", "0"]) == 1
    assert "no video restored" in capsys.readouterr().err


def test_restore_checks_device_and_timesteps_before_any_video(jobs, capsys, tmp_path):
    import torch

    (tmp_path / "src").mkdir()
    base = ["--src", "src", "--dst", "out"]
    run_bad(jobs, capsys, tmp_path, "restore", [*base, "--device", "nonsense"], "--device")
    run_bad(jobs, capsys, tmp_path, "restore", [*base, "--device", "cuda", "--num-gpus", "0"], "--device")
    if not torch.cuda.is_available():
        run_bad(jobs, capsys, tmp_path, "restore", [*base, "--device", "cuda", "--no-ray"], "--device")
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "scheduler").mkdir()
    (model / "unet" / "config.json").write_text("{}")
    (model / "scheduler" / "scheduler_config.json").write_text('{"num_train_timesteps": 1000}')
    from pipelines.common import video
    from tests.media import textured_frames
    video.write_video(str(tmp_path / "src" / "a.mp4"), textured_frames(2, 32, 48), fps=25, crf=0, preset="ultrafast")
    err = run_bad(jobs, capsys, tmp_path, "restore", [*base, "--model", "model", "--timesteps", "1500", "0"],
                  "--timesteps")
    assert "0..999" in err


def test_build_shards_names_a_looping_src(jobs, capsys, tmp_path):
    os.symlink("loop.mp4", tmp_path / "loop.mp4")
    err = run_bad(jobs, capsys, tmp_path, "build_shards", ["--src", "loop.mp4", "--dst", "out"], "--src")
    assert "symlink loop" in err

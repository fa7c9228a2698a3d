"""Shared fixtures: a real S3 server on loopback, sample media, a local Ray."""
from __future__ import annotations

import os

import pytest
import torch

from tests.s3server import S3Server

# Tiny models gain nothing from a second thread, and on a busy 2-core machine (Ray
# workers, DataLoader workers, the S3 server) OpenMP spin-waiting made some steps 25x
# slower. Each test process, and the Ray workers it starts, uses one thread.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real `rclone serve s3` process; its credentials are put in os.environ so that
    this process, its subprocesses and Ray workers started later all reach it."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "data").start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_server, request):
    """A fresh bucket per test: `s3://<test-name>`."""
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    return s3_server.make_bucket(name)


@pytest.fixture(scope="session")
def bikes_video():
    from pipelines.common.samples import sample_video

    return sample_video("bikes")


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray for the whole session (starting Ray costs seconds and ~1.7 GB).
    It starts after the S3 server so that its workers inherit the S3 credentials."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("AWS_")}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def training_shards(tmp_path_factory):
    """Small WebDataset shards of real footage for the training-job tests: the first
    64 frames of bikes.mp4 (two shots), 128 px clips of 4 frames, built without Ray."""
    from pipelines.common import video
    from pipelines.common.samples import sample_video
    from pipelines.data.shards import ShardConfig, build_shards

    root = tmp_path_factory.mktemp("training_shards")
    src = str(root / "src" / "bikes64.mp4")
    frames = video.read_frames(sample_video("bikes"), 0, 64)[:, :, 100:440]  # 272x340 crop
    video.write_video(src, frames, fps=25, crf=12, preset="ultrafast")
    dst = str(root / "shards")
    summary = build_shards(ShardConfig(src=src, dst=dst, clip_len=4, stride=4, size=128,
                                       use_ray=False, progress=False))
    assert summary["clips"] > 8, summary
    return dst

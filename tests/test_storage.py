"""pipelines.common.storage against a real S3 server process and the local filesystem."""
from __future__ import annotations

import os
import threading

import pytest

from pipelines.common import storage


def _roundtrip(base: str):
    storage.write_bytes(storage.join(base, "a/one.bin"), b"0123456789")
    storage.write_text(storage.join(base, "a/two.txt"), "hello")
    storage.write_bytes(storage.join(base, "b/three.bin"), b"x")
    assert storage.exists(storage.join(base, "a/one.bin"))
    assert not storage.exists(storage.join(base, "a/missing.bin"))
    assert storage.read_bytes(storage.join(base, "a/one.bin")) == b"0123456789"
    assert storage.read_bytes(storage.join(base, "a/one.bin"), start=3, end=7) == b"3456"
    assert storage.read_text(storage.join(base, "a/two.txt")) == "hello"
    listed = storage.glob(storage.join(base, "**/*.bin"))
    assert listed == [storage.join(base, "a/one.bin"), storage.join(base, "b/three.bin")]
    assert storage.relative_to(listed[1], base) == "b/three.bin"
    with storage.open(storage.join(base, "a/one.bin")) as f:
        f.seek(8)
        assert f.read() == b"89"


def test_local_roundtrip(tmp_path):
    _roundtrip(str(tmp_path / "root"))


def test_s3_roundtrip(s3_bucket):
    assert s3_bucket.startswith("s3://")
    _roundtrip(s3_bucket + "/prefix")


def test_s3_endpoint_comes_from_environment(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(Exception):
        storage.exists("s3://nowhere/x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    assert storage.exists("s3://nowhere/x") is False


@pytest.mark.parametrize("where", ["local", "s3"])
def test_atomic_write_is_seen_only_whole(where, tmp_path, request):
    base = request.getfixturevalue("s3_bucket") if where == "s3" else str(tmp_path)
    url = storage.join(base, "big.bin")
    chunk = b"z" * (1 << 20)
    started, release = threading.Event(), threading.Event()

    def writer():
        with storage.atomic_write(url) as f:
            for i in range(6):
                f.write(chunk)
                if i == 2:
                    started.set()
                    release.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    started.wait(10)
    assert not storage.exists(url), "a half-written object is visible"
    release.set()
    t.join()
    assert storage.size(url) == 6 * len(chunk)

    # A failed write leaves nothing behind, and never replaces the previous content.
    with pytest.raises(RuntimeError):
        with storage.atomic_write(url) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert storage.size(url) == 6 * len(chunk)
    if where == "local":
        assert os.listdir(tmp_path) == ["big.bin"], "temporary file left behind"


def test_local_copy_of_s3_object(s3_bucket):
    url = storage.join(s3_bucket, "v/clip.mp4")
    storage.write_bytes(url, b"not really a video")
    with storage.local_copy(url) as path:
        assert path.endswith(".mp4") and open(path, "rb").read() == b"not really a video"
    assert not os.path.exists(path)

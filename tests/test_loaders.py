"""Loaders over clip shards on a real S3 server: exact rank x worker split, reproducible
batches, fresh degradations per epoch, flow pairs that pass the warp check."""
from __future__ import annotations

import sys
import types

import cv2
import pandas as pd
import pytest
import torch

from models.flow.warp import backward_warp
from pipelines.common import storage, video
from pipelines.data.loaders import (
    LoaderConfig,
    list_shards,
    make_distill_loader,
    make_flow_loader,
    plan,
    resolve_rank,
    shard_index,
)
from pipelines.common.samples import sample_video
from pipelines.data.shards import ShardConfig, build_shards
from tests.media import shots_video


@pytest.fixture(scope="module")
def shards(s3_server, tmp_path_factory):
    """16 clips of 8 frames (64x64) in 5 shards on S3, from bikes.mp4 and a synthetic video."""
    folder = tmp_path_factory.mktemp("loader_src")
    frames = (cv2.resize(f, (320, 136), interpolation=cv2.INTER_AREA)
              for f in video.iter_frames(sample_video("bikes"), count=100))
    video.write_video(str(folder / "bikes100.mp4"), frames, fps=25, crf=18, preset="veryfast")
    shots_video(str(folder / "synth.mp4"), cuts=[17, 40], n=60, height=64, width=80)
    dst = f"{s3_server.make_bucket('loaders')}/shards"
    build_shards(ShardConfig(src=str(folder), dst=dst, clip_len=8, stride=8, size=64, shard_mb=0.1,
                             use_ray=False, progress=False))
    return dst


def manifest_keys(url: str) -> set[str]:
    with storage.open(storage.join(url, "manifest.parquet")) as f:
        return set(pd.read_parquet(f)["key"])


def test_two_ranks_two_workers_cover_the_epoch_exactly_once(shards):
    cfg = LoaderConfig(batch_size=3, num_workers=2, crop=64, clip_len=4, degrade="clean", scale=4)
    everything = manifest_keys(shards)
    assert len(everything) == 16 and len(list_shards(shards)) == 5
    seen: list[str] = []
    for rank in (0, 1):
        per_rank = []
        for batch in make_distill_loader(shards, cfg, rank=rank, world_size=2, epoch=1):
            lq, hq = batch                  # a pair (through worker processes) that is also a mapping
            assert lq is batch["lq"] and hq is batch["hq"] and dict(batch.items()).keys() == {"lq", "hq", "key"}
            assert hq.shape[1:] == (4, 3, 64, 64) and lq.shape[1:] == (4, 3, 16, 16) and len(hq) == len(batch["key"])
            assert hq.dtype == torch.float32 and 0 <= lq.min() <= lq.max() <= 1
            per_rank += batch["key"]
        assert len(per_rank) == 8           # 16 samples / 2 ranks, split by sample over 5 shards
        seen += per_rank
    assert len(seen) == len(set(seen)) == 16 and set(seen) == everything


def collect(loader) -> list[dict]:
    return [dict(b.items()) for b in loader]


def test_same_seed_same_batches_new_epoch_new_degradations(shards):
    cfg = LoaderConfig(batch_size=4, num_workers=2, crop=64, clip_len=3, degrade="light", scale=4, seed=7)
    a, b = collect(make_distill_loader(shards, cfg, epoch=0)), collect(make_distill_loader(shards, cfg, epoch=0))
    assert [x["key"] for x in a] == [x["key"] for x in b]
    assert all(torch.equal(x["lq"], y["lq"]) and torch.equal(x["hq"], y["hq"]) for x, y in zip(a, b))
    c = collect(make_distill_loader(shards, cfg, epoch=1))
    assert sorted(k for x in c for k in x["key"]) == sorted(k for x in a for k in x["key"])
    assert [x["key"] for x in c] != [x["key"] for x in a]                  # reshuffled
    lq0 = {k: x["lq"][i] for x in a for i, k in enumerate(x["key"])}
    lq1 = {k: x["lq"][i] for x in c for i, k in enumerate(x["key"])}
    assert sum(not torch.equal(lq0[k], lq1[k]) for k in lq0) >= 14        # fresh crops/degradations


def test_flow_pairs_from_shards_pass_the_warp_check(shards):
    cfg = LoaderConfig(batch_size=4, num_workers=0, crop=48, degrade="clean", flow_scale=1, max_flow=8.0)
    pairs, errors, moved = 0, [], []
    for batch in make_flow_loader(shards, cfg, rank=1, world_size=2):
        img1, img2, flow, valid = batch
        assert img1 is batch["img1"] and valid is batch["valid"] and len(batch["key"]) == len(img1)
        assert img1.shape[1:] == (3, 48, 48) and flow.shape[1:] == (2, 48, 48) and valid.dtype == torch.bool
        assert valid.float().mean() > 0.3
        m = valid[:, None].expand_as(img1)
        errors.append((backward_warp(img2, flow) - img1).abs()[m])
        moved.append((img2 - img1).abs()[m])
        pairs += len(img1)
    assert pairs == 8                                                  # rank 1 of 2: half of 16
    assert torch.cat(errors).mean() < 0.01                             # warps back onto frame 1
    assert torch.cat(moved).mean() > 5 * torch.cat(errors).mean()      # ... and the pairs really move


def test_degraded_flow_pairs_have_the_lq_size_and_scaled_flow(shards):
    cfg = LoaderConfig(batch_size=2, num_workers=0, crop=24, degrade="light", flow_scale=2, max_flow=6.0)
    batch = next(iter(make_flow_loader(shards, cfg, rank=0, world_size=8)))
    assert batch["img1"].shape == (2, 3, 24, 24) and batch["flow"].shape == (2, 2, 24, 24)
    assert batch["flow"].abs().max() <= 6.0 + 1e-3 and batch["valid"].any()


@pytest.mark.parametrize("counts", [[5, 3, 1, 7], [2], [1, 1, 1], [0, 4]])
def test_plan_splits_by_sample_exactly_and_evenly(counts):
    index = [(f"s{i}.tar", n) for i, n in enumerate(counts)]
    total = sum(counts)
    for readers in range(1, 8):
        taken = []
        for r in range(readers):
            ranges = plan(index, r, readers, seed=3, epoch=2, shuffle=True)
            got = [(u, i) for u, a, b in ranges for i in range(a, b)]
            assert abs(len(got) - total / readers) < 1
            taken += got
        assert sorted(taken) == sorted((u, i) for u, n in index for i in range(n))
    orders = {tuple(u for u, _, _ in plan(index, 0, 1, seed=0, epoch=e, shuffle=True)) for e in range(6)}
    assert len(orders) > 1 or sum(n > 0 for n in counts) == 1


def test_rank_from_ray_train_context_or_arguments(monkeypatch):
    ctx = types.SimpleNamespace(get_world_rank=lambda: 2, get_world_size=lambda: 3)
    fake_train = types.SimpleNamespace(get_context=lambda: ctx)
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(train=fake_train))
    monkeypatch.setitem(sys.modules, "ray.train", fake_train)
    assert resolve_rank(None, None) == (2, 3)
    assert resolve_rank(1, 4) == (1, 4)
    with pytest.raises(ValueError, match="rank"):
        resolve_rank(4, 4)


def test_folder_of_tars_without_manifest_and_clear_errors(shards, tmp_path):
    for url in list_shards(shards)[:2]:
        storage.write_bytes(str(tmp_path / url.rsplit("/", 1)[1]), storage.read_bytes(url))
    index = shard_index(str(tmp_path))
    assert [n for _, n in index] == [n for _, n in shard_index(shards)[:2]]
    with pytest.raises(ValueError, match="multiple of scale"):
        LoaderConfig(crop=30, scale=4)
    with pytest.raises(ValueError, match="smaller than the 128 px crop"):
        next(iter(make_distill_loader(str(tmp_path), LoaderConfig(num_workers=0, crop=128, degrade="clean"))))
    with pytest.raises(ValueError, match="preset"):
        make_distill_loader(shards, LoaderConfig(degrade="nope"))

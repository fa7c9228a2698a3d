"""What `--color-fix` does to d2vr's own restorations: PSNR-Y and colour shift, held-out frames.

    .venv/bin/python benchmarks/color_fix.py --tables runs/pt             # after benchmarks/paper_tables.py

Reads the restored held-out frames that `benchmarks/paper_tables.py` saved (<tables>/frames:
every method x preset x clip, and the ground truth), rebuilds each clip's degraded input
exactly as that run did (same recipe, same seed), applies `models.color_fix` (wavelet,
adain) toward the input's bicubic upscale and scores each against the ground truth:

- PSNR-Y (BT.601 luma, the tables' convention without the border crop);
- colour shift: mean over frames of |mean RGB of the output - mean RGB of the ground truth|,
  in 8-bit levels (0 = no global cast), and the same on 32x32 px blocks (local casts).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch


def psnr_y(a: np.ndarray, b: np.ndarray) -> float:
    w = np.array([65.481, 128.553, 24.966]) / 255
    ya, yb = a.astype(np.float64) @ w + 16, b.astype(np.float64) @ w + 16
    return float(10 * np.log10(255 ** 2 / np.mean((ya - yb) ** 2)))


def colour_shift(a: np.ndarray, b: np.ndarray, block: int = 0) -> float:
    """(T, H, W, 3) uint8 pair -> mean |channel mean difference| (levels), whole frame or per block."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    if block:
        t, h, w, _ = a.shape
        h, w = h // block * block, w // block * block
        a = a[:, :h, :w].reshape(t, h // block, block, w // block, block, 3).mean((2, 4))
        b = b[:, :h, :w].reshape(t, h // block, block, w // block, block, 3).mean((2, 4))
        return float(np.abs(a - b).mean())
    return float(np.abs(a.mean((1, 2)) - b.mean((1, 2))).mean())


def main(argv=None) -> int:
    import benchmarks.paper_tables as pt
    from models.color_fix import color_fix
    from pipelines.common import cli, video

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default="runs/paper_tables", help="a finished paper_tables --out folder")
    ap.add_argument("--methods", nargs="+", default=["student full", "teacher 4 steps"],
                    help="methods of that run to fix")
    ap.add_argument("--presets", nargs="+", default=["light", "medium", "plain"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.tables)
    state = json.loads((out / "state.json").read_text())
    saved = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    cfg = cli.from_dict(pt.TablesConfig, saved) if saved else pt.TablesConfig(out=str(out))
    clips = pt.eval_clips(cfg)
    rows = []
    for p_i, preset in enumerate(pt.EVAL_PRESETS):
        if preset not in args.presets:
            continue
        for c_i, (name, hq) in enumerate(clips):
            if name.startswith("own:"):
                continue
            lq = pt.degrade_eval(hq, preset, 1000 * p_i + c_i, cfg.jpeg_quality)
            gt = np.load(out / "frames" / f"{preset}__{c_i}__gt.npy")
            for method in args.methods:
                path = out / "frames" / f"{preset}__{c_i}__{method.replace(' ', '_').replace(',', '')}.npy"
                if not path.exists():
                    continue
                sr = np.load(path)
                for mode in ("none", "wavelet", "adain"):
                    x = torch.from_numpy(sr).permute(0, 3, 1, 2).float() / 255
                    fixed = video.to_uint8(color_fix(x, lq, mode))
                    rows.append({"preset": preset, "video": name, "method": method, "fix": mode,
                                 "psnr_y": psnr_y(fixed, gt), "shift": colour_shift(fixed, gt),
                                 "shift_32px": colour_shift(fixed, gt, 32)})
    if not rows:
        raise SystemExit(f"color_fix: no saved frames under {out}/frames (run benchmarks/paper_tables.py first)")
    print(f"held-out frames of {out} ({', '.join(k for k in state if k.startswith('student:'))}); "
          f"mean over {len({r['video'] for r in rows})} clips")
    print(f"{'preset':<7} {'method':<18} {'fix':<8} {'PSNR-Y':>7} {'shift':>6} {'shift 32px':>10}")
    for preset in args.presets:
        for method in args.methods:
            for mode in ("none", "wavelet", "adain"):
                sel = [r for r in rows if (r["preset"], r["method"], r["fix"]) == (preset, method, mode)]
                if sel:
                    print(f"{preset:<7} {method:<18} {mode:<8} {np.mean([r['psnr_y'] for r in sel]):7.2f} "
                          f"{np.mean([r['shift'] for r in sel]):6.2f} {np.mean([r['shift_32px'] for r in sel]):10.2f}")
    (out / "color_fix.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

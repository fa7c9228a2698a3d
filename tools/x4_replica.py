"""A random-weight replica of the Stable Diffusion x4 upscaler's hub repo, built offline.

    .venv/bin/python tools/x4_replica.py --out /tmp/x4                      # full size (~1.7 GB)
    .venv/bin/python tools/x4_replica.py --out /tmp/x4 --hf-home /tmp/hf    # + an offline hub cache
    HF_HOME=/tmp/hf HF_HUB_OFFLINE=1 .venv/bin/python jobs/distill.py \
        --teacher stabilityai/stable-diffusion-x4-upscaler ...              # the hub id now resolves

The layout is the hub repo's (`model_index.json`, `unet/ vae/ scheduler/ low_res_scheduler/
text_encoder/ tokenizer/`), every component built from the real configs (`models.presets`:
UNet 473.4 M, VAE 55.3 M parameters; the CLIP text encoder of SD 2: hidden 1024, 23 layers,
16 heads, 340.4 M) with random weights, and a real CLIP tokenizer made from the BPE merges
the `clip` package ships (49,408 tokens, padded with "!" as SD 2's). `--tiny` builds the same
layout with tiny components (tests). `--hf-home` also writes a Hugging Face cache entry for
`stabilityai/stable-diffusion-x4-upscaler` (refs/main -> a snapshot of the replica), so code
that loads the hub id (`from_pretrained(SD_X4_REPO)`) runs unchanged and offline: this is how
the tests, benchmarks and the GPU check exercise the real loading path without the weights.
Only timing, memory and plumbing are meaningful with random weights.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:     # run as a script: the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

REPLICA_REVISION = "0" * 40          # the snapshot "commit" of the cache entry
TEXT_ENCODER = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                    max_position_embeddings=77, vocab_size=49408, hidden_act="gelu", projection_dim=512,
                    layer_norm_eps=1e-5)
TINY_TEXT_ENCODER = dict(TEXT_ENCODER, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4)
MODEL_INDEX = {
    "_class_name": "StableDiffusionUpscalePipeline", "max_noise_level": 350,
    "low_res_scheduler": ["diffusers", "DDPMScheduler"], "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
}


def write_tokenizer(folder: Path) -> None:
    """CLIP's BPE vocabulary (bytes, bytes + </w>, 48,894 merges, start/end): SD 2's tokenizer."""
    import clip.simple_tokenizer as st

    lines = gzip.open(st.default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    alphabet = list(st.bytes_to_unicode().values())
    vocab = alphabet + [b + "</w>" for b in alphabet] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>"}))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
         "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>", "do_lower_case": True}))


def build(out: Path, tiny: bool = False, seed: int = 0) -> dict[str, float]:
    """Write the replica to `out`; returns the parameter counts (millions) per component."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    import diffusers
    from models import presets as P

    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(seed)
    unet_cfg = dict(P.TINY_UNET, cross_attention_dim=TINY_TEXT_ENCODER["hidden_size"]) if tiny else P.SD_X4_UNET
    parts = {"unet": UNet2DConditionModel(**unet_cfg),
             "vae": AutoencoderKL(**(P.TINY_VAE if tiny else P.SD_X4_VAE)),
             "text_encoder": CLIPTextModel(CLIPTextConfig(**(TINY_TEXT_ENCODER if tiny else TEXT_ENCODER)))}
    counts = {}
    for name, model in parts.items():
        model.save_pretrained(str(tmp / name))
        counts[name] = sum(p.numel() for p in model.parameters()) / 1e6
    DDIMScheduler(**P.SD_X4_SCHEDULER).save_pretrained(str(tmp / "scheduler"))
    DDPMScheduler(**P.SD_X4_LOW_RES_SCHEDULER).save_pretrained(str(tmp / "low_res_scheduler"))
    write_tokenizer(tmp / "tokenizer")
    (tmp / "model_index.json").write_text(json.dumps({**MODEL_INDEX, "_diffusers_version": diffusers.__version__},
                                                     indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return counts


def mirror_into_hf_cache(replica: Path, hf_home: Path, repo: str) -> Path:
    """A cache entry for `repo` whose main revision is the replica (files hard-linked or copied)."""
    entry = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = entry / "snapshots" / REPLICA_REVISION
    shutil.rmtree(snapshot, ignore_errors=True)
    for src in replica.rglob("*"):
        if src.is_file():
            dst = snapshot / src.relative_to(replica)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / "main").write_text(REPLICA_REVISION)
    return snapshot


def main(argv=None) -> int:
    from models.upscaler.config import SD_X4_REPO

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the replica (replaced)")
    p.add_argument("--hf-home", default="", help="also make the hub id resolve offline from this HF_HOME")
    p.add_argument("--tiny", action="store_true", help="tiny components in the same layout (tests)")
    p.add_argument("--seed", type=int, default=0, help="random weights' seed")
    args = p.parse_args(argv)
    counts = build(Path(args.out), args.tiny, args.seed)
    print("x4_replica: " + ", ".join(f"{k} {v:.1f} M" for k, v in counts.items()) + f" -> {args.out}")
    if args.hf_home:
        snap = mirror_into_hf_cache(Path(args.out), Path(args.hf_home), SD_X4_REPO)
        print(f"x4_replica: HF_HOME={args.hf_home} HF_HUB_OFFLINE=1 resolves {SD_X4_REPO} to {snap}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

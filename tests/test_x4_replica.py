"""tools/x4_replica.py: the x4 upscaler's hub layout with random weights, loaded by its hub id
offline (an HF cache entry), through d2vr's real loading code and diffusers' own pipeline."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, hf_home: Path, timeout: int = 600) -> str:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _replica(tmp_path: Path, tiny: bool) -> Path:
    hf = tmp_path / "hf"
    import importlib.util

    spec = importlib.util.spec_from_file_location("x4_replica", ROOT / "tools" / "x4_replica.py")
    x4_replica = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(x4_replica)
    counts = x4_replica.build(tmp_path / "x4", tiny=tiny)
    x4_replica.mirror_into_hf_cache(tmp_path / "x4", hf, "stabilityai/stable-diffusion-x4-upscaler")
    assert (tmp_path / "x4" / "model_index.json").is_file() and (tmp_path / "x4" / "tokenizer" / "vocab.json").is_file()
    return hf, counts


def test_tiny_replica_by_hub_id_offline_matches_the_pipeline_with_a_prompt(tmp_path):
    """Our teacher (real CLIP tokenizer + text encoder, guidance 9 against "") equals
    `StableDiffusionUpscalePipeline.from_pretrained(hub id)` called with the prompt itself."""
    hf, _ = _replica(tmp_path, tiny=True)
    out = _run("""
        import torch
        from diffusers import StableDiffusionUpscalePipeline
        from models.upscaler.bundle import UpscalerBundle
        from models.upscaler.config import SD_X4_REPO, UpscalerConfig
        from models.upscaler.video import VideoUpscaler
        bundle = UpscalerBundle.from_pretrained(SD_X4_REPO, prompt="a sharp photo", local_files_only=True)
        up = VideoUpscaler(bundle, UpscalerConfig(pretrained=SD_X4_REPO, prompt="a sharp photo"))
        assert up.guided and bundle.vae.config.scaling_factor == 0.08333
        pipe = StableDiffusionUpscalePipeline.from_pretrained(SD_X4_REPO, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        lq = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
        ours, _ = up.restore_frame(lq, sampler="teacher", steps=5, seed=5)
        ref = pipe(prompt="a sharp photo", image=lq, num_inference_steps=5, guidance_scale=9.0, noise_level=20,
                   generator=torch.Generator().manual_seed(5), output_type="pt").images
        print("MAXDIFF", float((ours - ref).abs().max()))
    """, hf)
    diff = float(next(l for l in out.splitlines() if l.startswith("MAXDIFF")).split()[1])
    assert diff <= 1e-5


@pytest.mark.slow
def test_full_size_replica_has_the_real_sizes_and_loads_by_hub_id(tmp_path):
    hf, counts = _replica(tmp_path, tiny=False)
    assert round(counts["unet"], 1) == 473.4 and round(counts["vae"], 1) == 55.3
    assert round(counts["text_encoder"], 1) == 340.4
    out = _run("""
        from models.upscaler.bundle import UpscalerBundle
        from models.upscaler.config import SD_X4_REPO
        b = UpscalerBundle.from_pretrained(SD_X4_REPO, local_files_only=True)
        print("SHAPES", tuple(b.prompt_embeds.shape), b.unet.config.in_channels, b.vae.config.scaling_factor,
              b.low_res_scheduler.config.beta_schedule)
    """, hf)
    assert "SHAPES (1, 77, 1024) 7 0.08333 scaled_linear" in out

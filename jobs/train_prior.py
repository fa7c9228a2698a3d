"""Train the x4 upscaler prior (the distillation teacher):
`ray job submit --working-dir . -- python jobs/train_prior.py --shards ... --out ... --init tiny`

Trains the Stable Diffusion x4 upscaler UNet with its own objective (v-prediction on VAE
latents; the low-res frame, noise-augmented with the low_res_scheduler at a random level,
is concatenated to the input and the level is the class label) on (lq, hq) frames from the
shards, degraded on the fly (--degrade). `--init tiny` starts from random weights and
first trains the tiny VAE (--vae-steps; its decoder keeps training with the UNet,
--joint-decoder); `--init sd-x4` fine-tunes the hub model (UNet only, VAE frozen; use a
small --lr such as 1e-5 and --use-gpu); `--init PATH` continues from an earlier export.
Ray Train + DeepSpeed (ZeRO stage and precision from --deepspeed-config); resumes from the
latest checkpoint after a worker failure and when started again with the same --run-name.
Exports with `save_pretrained` (unet/ vae/ scheduler/ low_res_scheduler/
prompt_embeds.safetensors) to --out, which `jobs/distill.py --teacher PATH` and
`UpscalerBundle.from_pretrained(PATH)` read. `--shards samples:bikes,carphone` trains on
the sample videos in memory instead of shards.
"""
import sys

import _bootstrap  # noqa: F401

from pipelines.common import cli
from pipelines.train.prior import PriorTrainConfig, train_prior

if __name__ == "__main__":
    train_prior(cli.parse(PriorTrainConfig, description=__doc__))
    sys.exit(0)

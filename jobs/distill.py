"""Efficient adversarial distillation:
`ray job submit --working-dir . -- python jobs/distill.py --shards ... --teacher PATH --flow PATH --out ...`

Distils the frozen x4 diffusion prior (--teacher: a save_pretrained folder, a hub id, or
"tiny") into the few-step temporal student (paper Sec. 2.3, 3.1): L_distill + 0.05 L_adv^G +
0.1 L_T-LPIPS, student and discriminator updated alternately with Adam at 2e-5, batch 8,
5000 steps, T_student = 750/500/250/0, the DRFA (--flow) frozen, clips from the shards
degraded on the fly. Ray Train + DeepSpeed (two ZeRO-2 engines; bf16 on GPU, fp32 on CPU);
resumes from the latest checkpoint after a worker failure and when started again with the
same --run-name. Exports ONE folder (--out) that `jobs/restore.py --model` and
`pipelines.model_folder.load` load: the teacher bundle, student/, flow.safetensors,
discriminator.safetensors and restorer.json.
"""
import sys

import _bootstrap  # noqa: F401  (repo root on sys.path)

from pipelines.common import cli
from pipelines.train.distill import DistillTrainConfig, distill


def main(argv=None) -> int:
    distill(cli.parse(DistillTrainConfig, argv, description=__doc__))
    return 0


if __name__ == "__main__":
    sys.exit(main())

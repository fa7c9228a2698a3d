"""DRFA pretraining: `ray job submit --working-dir . -- python jobs/pretrain_drfa.py --shards ... --out ...`

Trains the degradation-robust flow network (RAFT + GMA + confidence bias, paper Sec. 2.2)
on synthetic flow pairs made from shard frames and degraded on the fly, with Ray Train +
DeepSpeed (ZeRO stage and precision from --deepspeed-config). Resumes from the latest
checkpoint after a worker failure and when started again with the same --run-name.
Exports drfa.safetensors + drfa.json, which `models.flow.load(path)` reads.
"""
import sys

import _bootstrap  # noqa: F401

from pipelines.common import cli
from pipelines.train.drfa import DRFATrainConfig, pretrain_drfa

if __name__ == "__main__":
    pretrain_drfa(cli.parse(DRFATrainConfig, description=__doc__))
    sys.exit(0)

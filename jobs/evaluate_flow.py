"""Flow accuracy (EPE, 1/3/5-px) on held-out degraded flow pairs, per degradation preset.

    python jobs/evaluate_flow.py \
        --checkpoint raft=runs/flow_ablation/raft/drfa.safetensors \
        --checkpoint drfa=runs/flow_ablation/drfa/drfa.safetensors \
        --out runs/flow_eval
    # other held-out videos, fewer pairs, no Farneback:
    python jobs/evaluate_flow.py --checkpoint drfa=runs/demo/drfa/drfa.safetensors \
        --frames-from bikes /data/clip.mp4 --pairs 16 --baselines dis

Methods: every --checkpoint NAME=PATH (a models.flow safetensors checkpoint, e.g.
drfa.safetensors from jobs/pretrain_drfa.py) plus OpenCV's DIS and Farneback (--baselines;
add "zero", no motion, for the floor a learned method must beat). On a small CPU machine
pass --threads 1: tiny models run ~20x faster than with OpenMP spinning on 2 busy cores.
Pairs: DRFA's training recipe (pipelines/data/flow_pairs.py) from the last --holdout of
the frames of each --frames-from video (sample names or paths), with a fixed --seed;
every preset (--presets) degrades the same clean pairs. Writes flow_eval.md / .csv /
.json and examples/*.png under --out, prints the table and a one-line summary.
See pipelines/evaluation/flow_eval.py.
"""
from __future__ import annotations

import argparse
import sys

import _bootstrap  # noqa: F401  (repo root on sys.path)

from pipelines.common import cli
from pipelines.evaluation.flow_eval import FlowEvalConfig, evaluate_flow


def parse_args(argv=None) -> FlowEvalConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_arguments(parser, FlowEvalConfig)          # --checkpoint repeats
    ns = parser.parse_args(argv)
    return cli.from_namespace(FlowEvalConfig, ns)


def main(argv=None) -> int:
    evaluate_flow(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Score restored videos: paired (REDS-style, against ground truth) or no-reference (VideoLQ-style).

    # paired: every video under --gt is matched by relative path (extension ignored; video
    # files or frame folders) in each method's folder
    python jobs/evaluate.py --gt data/REDS30/gt --lq data/REDS30/lq \
        --method bicubic=out/bicubic --method teacher-50=out/teacher --method student-4=out/student \
        --out runs/eval/reds30
    # one method: --pred DIR [--name NAME]
    python jobs/evaluate.py --pred out/student --gt data/REDS30/gt --out runs/eval/student
    # no-reference (no --gt): NR metrics (MUSIQ, MANIQA, CLIP-IQA, NIQE) + flow-warping error
    python jobs/evaluate.py --method student=out/videolq --lq data/VideoLQ --out runs/eval/videolq

Writes under --out: per_video.{md,csv} (one row per method and video), summary.{md,csv}
(per method: the mean over videos), availability.md (which metrics could be computed and
the file each missing one needs), config.json, and report/index.html with its PNGs
(crops, x-t temporal profiles, the tables). Every table names the metric convention
(--convention tecogan | stablevsr; see pipelines/evaluation/conventions.py). A metric whose weights are
not on disk is reported as "not available: <file>", never as a number; nothing is
downloaded.
"""
from __future__ import annotations

import sys

import _bootstrap  # noqa: F401  (repo root on sys.path)

from pipelines.common import cli
from pipelines.evaluation.conventions import METRICS
from pipelines.evaluation.evaluate import EvaluateConfig, evaluate


def parse_args(argv=None) -> EvaluateConfig:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"metric names for --metrics: {', '.join(METRICS)}")
    cli.add_arguments(parser, EvaluateConfig)          # tuple flags (--method, --metrics) repeat
    ns = parser.parse_args(argv)
    ns.metrics = tuple(m for part in ns.metrics for m in part.split(",") if m)   # also "a,b"
    return cli.from_namespace(EvaluateConfig, ns)


def main(argv=None) -> int:
    evaluate(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

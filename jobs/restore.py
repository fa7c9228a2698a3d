"""Restore a video archive with the d2vr upscaler (or the bicubic baseline).

    python jobs/restore.py --src s3://archive/prefix --dst s3://out/prefix --model PATH
    ray job submit --working-dir . -- python jobs/restore.py --src ... --dst ... --model ... \
        --concurrency 8 --num-gpus 1

Every input video under --src (a folder or an s3:// prefix) gets a restored video at the same
relative path under --dst, with the same fps, frame count and audio; a manifest
(<dst>/manifest.parquet) gets one row per input. A re-run skips complete outputs of unchanged
inputs (size + mtime, or S3 ETag) and removes what a killed run left; SIGTERM stops the run,
writes the manifest and exits 143. The work is `pipelines.restore.archive.restore_archive`;
this script only parses flags.
"""
from __future__ import annotations

import os
import sys

import _bootstrap  # noqa: F401  (repo root on sys.path)

from pipelines.common import cli
from pipelines.restore.archive import Terminated, restore_archive
from pipelines.restore.config import RestoreConfig


def main(argv=None) -> int:
    cfg = cli.parse(RestoreConfig, argv, description=__doc__)
    try:
        with cli.usage_errors():
            summary = restore_archive(cfg)
    except Terminated as stop:                      # SIGTERM: the manifest is written; 128 + 15
        print(f"{os.path.basename(sys.argv[0])}: {stop}; a re-run resumes", file=sys.stderr, flush=True)
        return 143
    tried = [r for r in summary["rows"] if r["output"]]          # not the entries refused at listing
    not_input = [r for r in tried if r["status"] == "failed" and r["error_kind"] != "input"]
    if tried and summary["restored"] == 0 and not_input:        # the setup failed, not the archive
        print(f"{os.path.basename(sys.argv[0])}: error: no video restored; {len(not_input)} failed for a reason that is not their "
              f"input's (first: {not_input[0]['error'][:300]})", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

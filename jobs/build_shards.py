"""Raw videos -> WebDataset clip shards: `ray job submit --working-dir . -- python jobs/build_shards.py
--src s3://bucket/raw --dst s3://bucket/shards [--clip-len 16 --stride 16 --size 256 --shard-mb 256]`.

Also runs as a plain script on a local Ray (`python jobs/build_shards.py --src videos/ --dst runs/shards`).
Re-running resumes: finished videos are skipped, new ones add new shards, one whose source changed
(size + mtime, or S3 ETag) is rebuilt, and what a killed run left (temp files, `.part` files) goes. See
`pipelines/data/shards.py` for the layout and the guarantees.
"""
from __future__ import annotations

import json
import os
import sys

import _bootstrap  # noqa: F401  (repo root on sys.path)

from pipelines.common import cli
from pipelines.data.shards import ShardConfig, build_shards, check_paths


def main(argv=None) -> int:
    cfg = cli.parse(ShardConfig, argv, description=__doc__)
    with cli.usage_errors():
        check_paths(cfg)                 # before Ray starts and before dst/build.json is written
        if cfg.use_ray:
            import ray

            ray.init()   # joins the cluster under `ray job submit` (RAY_ADDRESS), else starts a local one
        summary = build_shards(cfg)
    print(json.dumps(summary))
    if summary["failed_not_input"] and not summary["videos_processed"] and not summary["videos_skipped"]:
        print(f"{os.path.basename(sys.argv[0])}: error: no video sharded; {summary['failed_not_input']} failed for a "
              f"reason that is not their input's (first: {summary['first_not_input_error']})", file=sys.stderr, flush=True)
        return 1                         # the setup failed, not the videos
    return 0


if __name__ == "__main__":
    sys.exit(main())

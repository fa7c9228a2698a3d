"""The manifest of an archive run (parquet, one row per input) and the plan: what to restore,
what is already complete (a `done` row or the output's `.done` marker) and what to skip.

Resume is keyed on the input's content identity (`storage.source_version`: size + mtime, or
S3 ETag), recorded in the row and the marker: an input that changed is restored again, and
its stale output goes first. Rows from before versions were recorded fall back to the size.
"""
from __future__ import annotations

import io
import json
import os

from pipelines.common import storage
from pipelines.common.cli import UsageError
from pipelines.restore.config import RestoreConfig
from pipelines.restore.stream import DONE_SUFFIX, empty_row, now_utc

MANIFEST_NAME = "manifest.parquet"


def manifest_url(cfg: RestoreConfig) -> str:
    return cfg.manifest or storage.join(cfg.dst, MANIFEST_NAME)


def read_manifest(url: str) -> dict[str, dict]:
    """{source: row} of a manifest; {} when there is none yet."""
    import pandas as pd

    if not storage.exists(url):
        return {}
    frame = pd.read_parquet(io.BytesIO(storage.read_bytes(url)))
    return {r["source"]: r for r in frame.to_dict("records")}


def write_manifest(url: str, rows: dict[str, dict]) -> None:
    """Atomically write all rows (sorted by source) as parquet."""
    import pandas as pd

    frame = pd.DataFrame(sorted(rows.values(), key=lambda r: r["source"]))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    storage.write_bytes(url, buffer.getvalue())


def normalise(url: str) -> str:
    return str(url).rstrip("/") if storage.is_remote(url) else os.path.abspath(url)


def _output_url(cfg: RestoreConfig, relpath: str) -> str:
    reason = storage.unsafe_relpath(relpath)
    if reason:                          # plan() rejects these first; never write outside --dst
        raise ValueError(f"no output for {relpath!r}: {reason}")
    if cfg.container:
        relpath = os.path.splitext(relpath)[0] + "." + cfg.container.lstrip(".")
    return storage.join(normalise(cfg.dst), relpath)


def same_source(recorded: dict, item: dict) -> bool:
    """Whether a row or marker was made from `item`'s input as it is now (same size, and same
    version where one was recorded)."""
    version = recorded.get("source_version")
    known = isinstance(version, str) and version != ""
    return recorded.get("source_size") == item["source_size"] and (not known or version == item["source_version"])


def _complete(item: dict, outputs: dict[str, int], row: dict | None) -> tuple[dict | None, bool]:
    """(the row of an earlier run whose output of `item` is complete, else None; whether the
    output's marker says it was made from another version of the input or is incomplete)."""
    out, size = item["output"], outputs.get(item["output"])
    if size is None:
        return None, False
    if row and row.get("status") == "done" and same_source(row, item) and row.get("output_size") == size:
        return row, False
    marker = out + DONE_SUFFIX
    if marker not in outputs:
        return None, False
    try:
        info = json.loads(storage.read_text(marker))
    except (OSError, ValueError):
        return None, False
    if not same_source(info, item) or info.get("output_size") != size:
        return None, True
    recovered = empty_row(item["source"], out, item["relpath"], item["source_size"], info.get("model", ""),
                          item["source_version"])
    recovered.update({k: v for k, v in info.items() if k in recovered}, status="skipped", finished_at=now_utc())
    return recovered, False


def _rejected(url: str, relpath: str, size: int, reason: str, model: str) -> dict:
    row = empty_row(url, "", relpath, size, model)
    row.update(error=reason, error_kind="input", finished_at=now_utc(), worker="")
    return row


def plan(cfg: RestoreConfig, previous: dict[str, dict]) -> tuple[list[dict], dict[str, dict], dict[str, dict]]:
    """(items to restore, {source: row} of inputs skipped, {source: failed row} of inputs that
    cannot be restored: a dangling or looping symlink, a FIFO or other special file, a path
    that would put its output outside --dst), from two listings and the manifest."""
    if not cfg.src or not cfg.dst:
        raise UsageError("--src and --dst are required")
    src, dst = normalise(cfg.src), normalise(cfg.dst)
    if src == dst:
        raise UsageError(f"--dst must differ from --src ({cfg.src})")
    if not storage.is_remote(src) and not os.path.isdir(src):
        raise UsageError(f"--src {cfg.src}: no such folder")
    if dst.startswith("s3://") and not storage.exists("s3://" + dst[len("s3://"):].split("/")[0]):
        raise UsageError(f"--dst {cfg.dst}: the bucket does not exist")
    extensions = {e.lower().lstrip(".") for e in cfg.extensions}

    def wanted(u: str) -> bool:                                     # outputs inside src are not inputs
        return u.rsplit(".", 1)[-1].lower() in extensions and not u.startswith(dst + "/")

    files, others = storage.list_sources(src)
    sources = {u: s for u, s in files.items() if wanted(u)}
    rejected = {u: _rejected(u, storage.relative_to(u, src), -1, reason, cfg.model)
                for u, reason in others.items() if wanted(u)}
    outputs = storage.list_files(cfg.dst)
    todo, skipped, seen = [], {}, {}
    for url, (size, version) in sorted(sources.items()):
        relpath = storage.relative_to(url, src)
        unsafe = storage.unsafe_relpath(relpath)
        if unsafe:
            rejected[url] = _rejected(url, relpath, size, f"not restored: {unsafe}", cfg.model)
            continue
        item = {"source": url, "relpath": relpath, "output": _output_url(cfg, relpath), "source_size": size,
                "source_version": version}
        if item["output"] in seen:
            raise UsageError(f"{url} and {seen[item['output']]} would both be restored to {item['output']}")
        seen[item["output"]] = url
        row = previous.get(url)
        done, marker_stale = (None, False) if cfg.force else _complete(item, outputs, row)
        # its input changed since its output was made: the old output must not outlive a failure
        item["stale"] = marker_stale or bool(row and row.get("status") == "done" and not same_source(row, item))
        if done is not None:
            skipped[url] = done
        elif (row and row.get("status") == "failed" and row.get("error_kind") == "input"
              and same_source(row, item) and not cfg.retry_failed and not cfg.force):
            skipped[url] = row              # known unreadable and unchanged: keep its failed row
        else:
            todo.append(item)
    return todo, skipped, rejected

"""One small storage API for local paths and `s3://` URLs (fsspec + s3fs).

Every function takes a URL: a local path (`/data/x.mp4`, `runs/demo`) or `s3://bucket/key`.
The S3 endpoint and keys come from `S3Config` (explicit) or the standard environment
variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), so the same
code talks to AWS and to any S3-compatible store.

Atomic writes: a reader never sees a half-written file or object. Locally we write a
temporary sibling and `os.replace` it into place; on S3 an object becomes visible only
when its upload (single PUT or completed multipart upload) finishes, so we upload to the
final key in one operation from a spooled local buffer.
"""
from __future__ import annotations

import builtins
import contextlib
import dataclasses
import fcntl
import os
import re
import shutil
import tempfile
import time
import uuid
from typing import IO, Iterator

import fsspec


@dataclasses.dataclass(frozen=True)
class S3Config:
    endpoint_url: str | None = None  # None: AWS_ENDPOINT_URL or the AWS default
    key: str | None = None           # None: AWS_ACCESS_KEY_ID / the usual credential chain
    secret: str | None = None        # None: AWS_SECRET_ACCESS_KEY


_s3_config = S3Config()


def configure_s3(config: S3Config) -> None:
    """Set the S3 endpoint/keys used by this process (else the environment's)."""
    global _s3_config
    _s3_config = config


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# what a Ray worker needs from the driver's environment to reach the same storage and models:
# S3 credentials and endpoint, the Hugging Face token/cache/mirror (hub ids such as the x4
# upscaler), the torch hub cache (LPIPS' AlexNet, metric weights)
WORKER_ENV_PREFIXES = ("AWS_",)
WORKER_ENV_NAMES = ("HF_TOKEN", "HF_HOME", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "TORCH_HOME")


def worker_env(environ=None) -> dict[str, str]:
    """The driver's variables that Ray workers get (`runtime_env={"env_vars": ...}`)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(WORKER_ENV_PREFIXES) or k in WORKER_ENV_NAMES}


def is_remote(url: str) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


def _strip_file_scheme(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URL."""
    url = str(url)
    if url.startswith("s3://"):
        import s3fs

        # Checksums on every request break ranged reads against some S3-compatible
        # servers (seen with rclone); only compute them where a request needs one.
        os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
        os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
        endpoint = _s3_config.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        fs = s3fs.S3FileSystem(
            key=_s3_config.key or os.environ.get("AWS_ACCESS_KEY_ID"),
            secret=_s3_config.secret or os.environ.get("AWS_SECRET_ACCESS_KEY"),
            client_kwargs={"endpoint_url": endpoint} if endpoint else {},
            skip_instance_cache=True,  # fork-safe: never share a client across processes
        )
        return fs, url[len("s3://"):]
    if is_remote(url):
        fs, path = fsspec.core.url_to_fs(url)
        return fs, path
    return fsspec.filesystem("file"), os.path.abspath(_strip_file_scheme(url))


def _url(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    return f"s3://{path}" if str(like).startswith("s3://") else path


def join(base: str, *parts: str) -> str:
    """Join URL parts with '/' (also for S3), without touching the scheme."""
    out = str(base).rstrip("/")
    for p in parts:
        out = f"{out}/{str(p).strip('/')}"
    return out


def relative_to(url: str, base: str) -> str:
    """`url` relative to the prefix `base` ('a/b.mp4')."""
    u, b = str(url), str(base).rstrip("/") + "/"
    if not is_remote(u):
        return os.path.relpath(os.path.abspath(_strip_file_scheme(u)), os.path.abspath(_strip_file_scheme(b)))
    if not u.startswith(b):
        raise ValueError(f"{url} is not under {base}")
    return u[len(b):]


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def check_access(url: str, flag: str) -> None:
    """Before any work: `UsageError` naming `flag` and `url` when the store refuses us (S3 403:
    bad credentials or no permission; a local folder we may not read). A missing path is not
    refused here: each job says what it needs to exist."""
    from pipelines.common.cli import UsageError

    fs, path = filesystem(url)
    try:
        fs.exists(path)
        if not is_remote(url) and os.path.isdir(path):
            os.listdir(path)
    except PermissionError as exc:
        hint = ("; check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and "
                "AWS_ENDPOINT_URL" if is_remote(url) else "")
        raise UsageError(f"{flag} {url}: access denied ({' '.join(str(exc).split())[:200]}){hint}") from None


def size(url: str) -> int:
    fs, path = filesystem(url)
    return int(fs.size(path))


def glob(pattern: str) -> list[str]:
    """Sorted URLs matching a glob (`**` recurses), with the scheme kept."""
    fs, path = filesystem(pattern)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()
    return sorted(_url(fs, p, pattern) for p in fs.glob(path) if fs.isfile(p))


def open(url: str, mode: str = "rb", **kwargs) -> IO:  # noqa: A001 - mirrors builtins.open
    """Open for reading (`rb`, `r`) or plain, non-atomic writing. Prefer `atomic_write`."""
    fs, path = filesystem(url)
    if "w" in mode and not is_remote(url):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return fs.open(path, mode, **kwargs)


def read_bytes(url: str, start: int | None = None, end: int | None = None) -> bytes:
    """Whole object, or the byte range [start, end) as a ranged read."""
    fs, path = filesystem(url)
    if start is None and end is None:
        return fs.cat_file(path)
    return fs.cat_file(path, start=start, end=end)


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


@contextlib.contextmanager
def atomic_write(url: str) -> Iterator[IO[bytes]]:
    """Binary file handle whose content appears at `url` only if the block succeeds."""
    fs, path = filesystem(url)
    if not is_remote(url):
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise
        return
    # Remote: spool locally, then one upload; the object is visible only once complete.
    with tempfile.NamedTemporaryFile(prefix="d2vr-upload-", suffix=".part", dir=temp_root()) as tmp:
        yield tmp
        tmp.flush()
        fs.put_file(tmp.name, path)


def write_bytes(url: str, data: bytes) -> None:
    """Atomically write `data` to `url`."""
    with atomic_write(url) as f:
        f.write(data)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def upload_file(local_path: str, url: str) -> None:
    """Atomically copy a local file to `url` (local or S3)."""
    if not is_remote(url):
        with builtins.open(local_path, "rb") as src, atomic_write(url) as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)
        return
    fs, path = filesystem(url)
    fs.put_file(local_path, path)


def upload_tree(local: str, url: str, last: tuple[str, ...] = ()) -> None:
    """Copy every file under the local folder `local` to `url` (local or S3), keeping relative
    paths; the files named in `last` (relative paths) go last, so that a folder holding them
    is complete."""
    files = sorted(os.path.relpath(os.path.join(root, name), local)
                   for root, _, names in os.walk(local) for name in names)
    files.sort(key=lambda rel: rel in last)
    for rel in files:
        upload_file(os.path.join(local, rel), join(url, *rel.split(os.sep)))


def _find(root: str) -> tuple[fsspec.AbstractFileSystem, dict[str, dict]]:
    """(filesystem, {path: info}) of one recursive listing under `root` ({} if absent)."""
    fs, path = filesystem(root)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()
    try:
        return fs, fs.find(path, detail=True)
    except FileNotFoundError:
        return fs, {}


def list_files(root: str) -> dict[str, int]:
    """{url: size} of every file under `root` (one recursive listing; {} if absent)."""
    fs, found = _find(root)
    return {_url(fs, p, root): int(info.get("size") or 0)
            for p, info in found.items() if info.get("type", "file") == "file"}


def _remote_version(info: dict) -> str:
    """An object's content identity: size and ETag (else modification time)."""
    etag, size = str(info.get("ETag") or "").strip('"'), int(info.get("size") or 0)
    return f"size={size} etag={etag}" if etag else f"size={size} modified={info.get('LastModified')}"


def _local_version(path: str) -> str:
    st = os.stat(path)                                      # a symlink's target
    return f"size={st.st_size} mtime_ns={st.st_mtime_ns}"


def source_version(url: str) -> str:
    """The content identity of one file: what resume compares to tell a changed source from
    the one an earlier run read (a size alone misses an edit that keeps the length)."""
    fs, path = filesystem(url)
    return _remote_version(fs.info(path)) if is_remote(url) else _local_version(path)


def _special_reason(path: str) -> str:
    """Why a listed local entry that is not a regular file cannot be read as one."""
    import errno
    import stat

    link = os.path.islink(path)
    try:
        mode = os.stat(path).st_mode           # follows a symlink
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if link and exc.errno == errno.ENOENT:
            return f"dangling symlink (its target {os.readlink(path)} does not exist)"
        return f"unreadable entry ({exc.__class__.__name__}: {exc.strerror})"
    kind = ("FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
            else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "folder" if stat.S_ISDIR(mode)
            else "special file")
    return f"not a regular file ({'a symlink to a ' + kind if link else kind})"


def list_sources(root: str) -> tuple[dict[str, tuple[int, str]], dict[str, str]]:
    """What a job reads under `root`: ({url: (size, content identity)} of the files, a symlink
    to a file counting as that file (see `source_version`); {url: reason} of every other
    entry: a dangling or looping symlink, a FIFO, a socket, a device). Both {} if `root` is
    absent. On S3 every object is a file."""
    fs, found = _find(root)
    if is_remote(root):
        return {_url(fs, p, root): (int(i.get("size") or 0), _remote_version(i))
                for p, i in found.items() if i.get("type", "file") == "file"}, {}
    files, bad = {}, {}
    for p, info in found.items():
        if info.get("type") == "file" or os.path.isfile(p):    # a symlink to a regular file: follow it
            files[p] = (os.path.getsize(p), _local_version(p))
        else:
            bad[p] = _special_reason(p)
    return files, bad


def list_inputs(root: str) -> tuple[dict[str, int], dict[str, str]]:
    files, bad = list_sources(root)                         # ({url: size}, {url: reason})
    return {u: size for u, (size, _) in files.items()}, bad


def unsafe_relpath(relpath: str) -> str:
    """Why `relpath` (an input's path under its --src, e.g. an S3 key's tail) cannot name an
    output under --dst: "" when it is safe; else the reason (a '..' or empty segment, or an
    absolute path, would resolve outside --dst or onto another name)."""
    rel = str(relpath).replace(os.sep, "/")
    parts = rel.split("/")
    if rel.startswith("/"):
        return f"absolute path {relpath!r}"
    if ".." in parts:
        return f"path {relpath!r} has a '..' segment: its output would lie outside --dst"
    if "" in parts or "." in parts:
        return f"path {relpath!r} has an empty or '.' segment"
    return ""


def remove(url: str) -> None:
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path)


def remove_tree(url: str) -> None:
    """Remove a folder (an S3 prefix) and everything under it; a no-op when absent."""
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)


def makedirs(url: str) -> None:
    """Create a local directory; a no-op on S3 (prefixes need no creation)."""
    if not is_remote(url):
        os.makedirs(_strip_file_scheme(url), exist_ok=True)


@contextlib.contextmanager
def local_copy(url: str) -> Iterator[str]:
    """A local file path with the content of `url` (the file itself when local)."""
    if not is_remote(url):
        yield os.path.abspath(_strip_file_scheme(url))
        return
    fs, path = filesystem(url)
    suffix = os.path.splitext(path)[1]
    with tempfile.TemporaryDirectory(prefix="d2vr-", dir=temp_root()) as tmpdir:
        local = os.path.join(tmpdir, f"{uuid.uuid4().hex}{suffix}")
        fs.get_file(path, local)
        yield local


@contextlib.contextmanager
def local_dir(url: str) -> Iterator[str]:
    """A local folder with the content of `url` (downloaded once from s3://); anything
    that is not remote (a local folder, a hub id, a built-in model name) passes through."""
    if not is_remote(url):
        yield url
        return
    fs, path = filesystem(url)
    with tempfile.TemporaryDirectory(prefix="d2vr-dir-", dir=temp_root()) as tmpdir:
        fs.get(path.rstrip("/") + "/", tmpdir, recursive=True)
        yield tmpdir


# ------------------------------------------------------------------ what a killed run leaves
# A SIGKILL runs no cleanup (and Ray workers go on ~1.5 s after their driver dies): the next
# run removes `atomic_write` temporaries in the destination and the run folders (every
# download, upload spool and encode) under the temp dir that no live process holds.
TMP_ENV = "D2VR_TMPDIR"          # the run's temp folder, for this process (set by `run_tempdir`)
RUN_PREFIX = "d2vr-run-"
_LOCK = ".lock"
PART_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.part$")   # atomic_write's: ".<name>.<mkstemp's 8>.part"


def temp_root() -> str:
    """Where our temporary files go: the run's folder if a job set one (made by `_hold`, never
    re-made after the run removed it), else the system's."""
    return os.environ.get(TMP_ENV) or tempfile.gettempdir()


def remove_stale_parts(root: str) -> list[str]:
    """Remove the `atomic_write` temporaries (`.<name>.<8 random>.part`, no other name) that
    killed writers left under the local folder `root`; S3 has none. Call it when no writer of
    this run is active (at the start and the end of a run): it does not check."""
    removed: list[str] = []
    if is_remote(root):
        return removed
    for folder, _, names in os.walk(_strip_file_scheme(root)):
        for name in names:
            if PART_NAME.match(name):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(folder, name))
                    removed.append(os.path.join(folder, name))
    return removed


def _hold(folder: str) -> int:
    """fd of a shared lock on `folder` (released with the fd, also by a SIGKILL): while any
    process holds one, no sweep removes the folder."""
    lock = os.path.join(folder, _LOCK)
    while True:                                        # a sweep may remove it meanwhile: retry
        os.makedirs(folder, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_SH)
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
            os.close(fd)


def _remove_if_unheld(folder: str, fd: int | None = None) -> bool:
    """Remove `folder` if no other process holds it (locked exclusively meanwhile through `fd`
    or a new fd, so that a `_hold` waits, then re-makes it); one without a lock file (a race of
    microseconds) counts as unheld once 10 s old."""
    own = fd is None
    try:
        fd = os.open(os.path.join(folder, _LOCK), os.O_RDWR) if own else fd
    except FileNotFoundError:
        fd = None
    try:
        if fd is None and time.time() - os.path.getmtime(folder) <= 10:
            return False
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)     # BlockingIOError: held
        shutil.rmtree(folder, ignore_errors=True)
        return True
    except BlockingIOError:
        return False
    finally:
        if own and fd is not None:
            os.close(fd)


def sweep_stale_runs(parent: str | None = None) -> list[str]:
    """Remove the run folders under `parent` (the temp dir) that no live process holds: what
    killed runs left (partial encodes, downloads, upload spools); returns them."""
    parent, removed = parent or tempfile.gettempdir(), []
    for name in sorted(os.listdir(parent)):
        folder = os.path.join(parent, name)
        if name.startswith(RUN_PREFIX) and os.path.isdir(folder) and not os.path.islink(folder):
            with contextlib.suppress(OSError):        # gone meanwhile, or another user's
                if _remove_if_unheld(folder):
                    removed.append(folder)
    return removed


@contextlib.contextmanager
def _using(folder: str, remove) -> Iterator[None]:
    """Hold `folder` as this process's `temp_root()` for the block, then `remove(folder, fd)`."""
    fd, saved = _hold(folder), os.environ.get(TMP_ENV)
    os.environ[TMP_ENV] = folder
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(TMP_ENV, None)
        else:
            os.environ[TMP_ENV] = saved
        remove(folder, fd)
        os.close(fd)


@contextlib.contextmanager
def run_tempdir() -> Iterator[str]:
    """A job's temp folder (`d2vr-run-*`), `temp_root()` while the run lasts and removed at its
    end (its tasks ended or were abandoned); killed runs' go first. Workers get the path."""
    sweep_stale_runs()
    folder = tempfile.mkdtemp(prefix=RUN_PREFIX)
    with _using(folder, lambda f, fd: shutil.rmtree(f, ignore_errors=True)):
        yield folder


@contextlib.contextmanager
def task_tempdir(folder: str) -> Iterator[None]:
    """A worker's task uses the run's temp folder (made on this node if absent, stale ones swept
    then); where no driver or other task holds it, the task removes it at its end. "": no-op."""
    if not folder:
        yield
        return
    if not os.path.isdir(folder):
        sweep_stale_runs(os.path.dirname(folder))
    with _using(folder, _remove_if_unheld):
        yield

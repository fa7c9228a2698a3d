"""Typed dataclass configs <-> command-line flags, with no registry magic.

`parse(MyConfig)` builds an argparse parser from the dataclass fields (a field `clip_len`
becomes `--clip-len`; its help is the field's comment in the source: the trailing `# ...`
on its line, its continuation lines, or the `# ...` lines just above it; `metadata["help"]`
wins if given), parses
`sys.argv`, and returns a `MyConfig`. Booleans take `--flag/--no-flag`; tuples and
lists take several values and the flag repeats (`--method a=x --method b=y` is the same as
`--method a=x b=y`; a given flag replaces the default, it does not add to it);
`Optional[...]` fields accept `none`.

User errors are one line and exit 2, before any work: a config's `__post_init__` raises
`ValueError("--flag: reason")`, which `parse` prints as `<prog>: error: --flag: reason`; a
job raises `UsageError` for what only the run can check (a missing --src, a bad --model),
and `usage_errors()` prints it the same way.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import inspect
import io
import json
import re
import sys
import tokenize
import types
import typing


def _base_type(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]), True
    return tp, False


def _converter(tp):
    if tp is bool:
        return None
    if typing.get_origin(tp) in (tuple, list):
        inner = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return inner[0] if inner else str
    return tp if tp in (int, float, str) else str


class _Repeatable(argparse.Action):
    """nargs="+" that accumulates over repeated flags; the first use replaces the default."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        given_before = current is not None and current is not self.default
        setattr(namespace, self.dest, (list(current) if given_before else []) + list(values))


_FIELD = re.compile(r"^\s+([A-Za-z_]\w*)\s*:")


@functools.lru_cache(maxsize=None)
def _class_comments(cls) -> dict[str, str]:
    """{field: its comment} read from one class's source (empty if the source is unavailable)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and not tok.string.lstrip("#").strip().startswith("---"):
            comments[tok.start[0]] = tok.string.lstrip("#").strip()    # "# --- x" heads a section
    lines = source.splitlines()
    out: dict[str, str] = {}
    above: list[str] = []
    last = None
    for n, line in enumerate(lines, start=1):
        m = _FIELD.match(line)
        stripped = line.strip()
        if m and not stripped.startswith(("def ", "@")):
            text = above + ([comments[n]] if n in comments and not stripped.startswith("#") else [])
            last = m.group(1)
            out[last] = " ".join(t for t in text if t)
            above = []
        elif stripped.startswith("#"):
            indent_cont = last is not None and line.index("#") > 8 and not above
            if indent_cont and out.get(last):        # a trailing comment continued on the next line
                out[last] += " " + comments.get(n, "")
            else:
                above.append(comments.get(n, ""))
        else:
            above, last = [], (None if stripped else last)
    return out


def field_help(config_cls, name: str) -> str:
    """The comment that documents field `name` of `config_cls` (searched through its bases)."""
    for klass in config_cls.__mro__:
        text = _class_comments(klass).get(name) if dataclasses.is_dataclass(klass) else None
        if text:
            return text
    return ""


def add_arguments(parser: argparse.ArgumentParser, config_cls, defaults=None) -> None:
    hints = typing.get_type_hints(config_cls)
    defaults = defaults or config_cls()
    for field in dataclasses.fields(config_cls):
        if not field.init:
            continue
        tp, optional = _base_type(hints[field.name])
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        text = field.metadata.get("help") or field_help(config_cls, field.name)
        help_text = ((text + " " if text else "") + f"(default: {default})").replace("%", "%%")
        if tp is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                                default=default, help=help_text)
            continue
        conv = _converter(tp)
        if optional:
            inner = conv
            conv = lambda s, inner=inner: None if s.lower() == "none" else inner(s)  # noqa: E731
        if typing.get_origin(tp) in (tuple, list):
            parser.add_argument(flag, dest=field.name, type=conv, nargs="+", action=_Repeatable,
                                default=default, help=help_text)
            continue
        if dataclasses.is_dataclass(tp):
            conv = json.loads
        parser.add_argument(flag, dest=field.name, type=conv, default=default, help=help_text)


def from_namespace(config_cls, namespace: argparse.Namespace, base=None):
    hints = typing.get_type_hints(config_cls)
    values = {}
    for field in dataclasses.fields(config_cls):
        if not field.init or not hasattr(namespace, field.name):
            continue
        value = getattr(namespace, field.name)
        tp, _ = _base_type(hints[field.name])
        if typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    return dataclasses.replace(base, **values) if base is not None else config_cls(**values)


def require(ok: bool, flag: str, rule: str, value) -> None:
    """For a config's `__post_init__`: raise `ValueError("--flag: must be <rule>, got <value>")`."""
    if not ok:
        raise ValueError(f"{flag}: must be {rule}, got {value!r}")


class UsageError(ValueError):
    """A user error (a flag, a path): printed as one line naming it, exit status 2."""


def fail(prog: str, error: Exception) -> None:
    """Print `<prog>: error: <error>` (one line) to stderr and exit 2."""
    message = " ".join(str(error).split())
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


@contextlib.contextmanager
def usage_errors(prog: str | None = None):
    """Turn a `UsageError` raised inside the block into one line on stderr and exit 2."""
    try:
        yield
    except UsageError as exc:
        fail(prog or _prog(), exc)


def _prog() -> str:
    import os

    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "job"


def parse(config_cls, argv=None, description: str | None = None, defaults=None):
    """The config from `argv` (default sys.argv); a bad flag value exits 2 with one line."""
    parser = argparse.ArgumentParser(description=description or (config_cls.__doc__ or "").strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, config_cls, defaults)
    namespace = parser.parse_args(argv)
    try:
        return from_namespace(config_cls, namespace, defaults)
    except ValueError as exc:         # __post_init__: "--flag: reason"
        fail(parser.prog, exc)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)

"""Typed dataclass configs <-> command-line flags, with no registry magic.

`parse(MyConfig)` builds an argparse parser from the dataclass fields (a field `clip_len`
becomes `--clip-len`; its help is the field's comment in the source: the trailing `# ...`
on its line, its continuation lines, or the `# ...` lines just above it; `metadata["help"]`
wins if given), parses
`sys.argv`, and returns a `MyConfig`. Booleans take `--flag/--no-flag`; tuples and
lists take several values and the flag repeats (`--method a=x --method b=y` is the same as
`--method a=x b=y`; a given flag replaces the default, it does not add to it);
`Optional[...]` fields accept `none`.

A field whose type is itself a config (e.g. `loss: DistillConfig`) is not one flag: each of
its fields is a flag of its own, named as in the nested config (`--lambda-adv`), explained by
that config's comments, so every default is stated once, in the config that uses it.
`metadata={"flags": {"pretrained": "teacher"}}` on the nested field renames a flag.
`build(MyConfig, lambda_adv=0.0)` makes a config from flag-named values the same way, and
`from_dict` rebuilds one from `dataclasses.asdict` (e.g. after a trip through Ray).

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


class _Flag(typing.NamedTuple):
    path: tuple[str, ...]        # field names from the top config down, e.g. ("loss", "lambda_adv")
    name: str                    # flag name with underscores ("lambda_adv" -> --lambda-adv)
    tp: object                   # the field's type, Optional removed
    optional: bool
    default: object
    help: str


def flags(config_cls, defaults=None, path: tuple[str, ...] = (), renames=None) -> list[_Flag]:
    """Every flag of `config_cls`, nested configs flattened (see the module docstring)."""
    hints = typing.get_type_hints(config_cls)
    defaults = defaults if defaults is not None else config_cls()
    renames = renames or {}
    out: list[_Flag] = []
    for field in dataclasses.fields(config_cls):
        if not field.init:
            continue
        tp, optional = _base_type(hints[field.name])
        default = getattr(defaults, field.name)
        if dataclasses.is_dataclass(tp):
            out += flags(tp, default, path + (field.name,), field.metadata.get("flags", {}))
            continue
        text = field.metadata.get("help") or field_help(config_cls, field.name)
        out.append(_Flag(path + (field.name,), renames.get(field.name, field.name), tp, optional, default, text))
    names = [f.name for f in out]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise TypeError(f"{config_cls.__name__}: flags {clashes} come from more than one field; rename them")
    return out


def add_arguments(parser: argparse.ArgumentParser, config_cls, defaults=None) -> None:
    for f in flags(config_cls, defaults):
        flag = "--" + f.name.replace("_", "-")
        dest = ".".join(f.path)
        help_text = ((f.help + " " if f.help else "") + f"(default: {f.default})").replace("%", "%%")
        metavar = f.name.upper()
        if f.tp is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                default=f.default, help=help_text)
            continue
        conv = _converter(f.tp)
        if f.optional:
            inner = conv
            conv = lambda s, inner=inner: None if s.lower() == "none" else inner(s)  # noqa: E731
        if typing.get_origin(f.tp) in (tuple, list):
            parser.add_argument(flag, dest=dest, type=conv, nargs="+", action=_Repeatable,
                                default=f.default, help=help_text, metavar=metavar)
            continue
        parser.add_argument(flag, dest=dest, type=conv, default=f.default, help=help_text, metavar=metavar)


def _assemble(config_cls, values: dict[tuple[str, ...], object], base=None):
    """A `config_cls` from {field path: value}, nested configs built from their own paths."""
    hints = typing.get_type_hints(config_cls)
    kwargs = {}
    for field in dataclasses.fields(config_cls):
        if not field.init:
            continue
        tp, _ = _base_type(hints[field.name])
        if dataclasses.is_dataclass(tp):
            inner = {p[1:]: v for p, v in values.items() if p[0] == field.name}
            if inner:
                try:
                    kwargs[field.name] = _assemble(tp, inner, getattr(base, field.name) if base is not None else None)
                except ValueError as exc:     # "noise_level must be ..." from a nested config -> "--noise-level: ..."
                    raise ValueError(_name_the_flag(str(exc), flags(tp), field.metadata.get("flags", {}))) from None
            continue
        if (field.name,) in values:
            value = values[(field.name,)]
            kwargs[field.name] = tuple(value) if typing.get_origin(tp) is tuple and isinstance(value, list) else value
    return dataclasses.replace(base, **kwargs) if base is not None else config_cls(**kwargs)


def _name_the_flag(message: str, nested: list[_Flag], renames: dict) -> str:
    """A nested config's error that starts with one of its field names, restated with the flag."""
    for f in nested:
        field = f.path[-1]
        if message.startswith(field + " "):
            return f"--{renames.get(field, field).replace('_', '-')}: {message[len(field) + 1:]}"
    return message


def from_namespace(config_cls, namespace: argparse.Namespace, base=None):
    values = {f.path: getattr(namespace, ".".join(f.path)) for f in flags(config_cls, base)
              if hasattr(namespace, ".".join(f.path))}
    return _assemble(config_cls, values, base)


def build(config_cls, base=None, **values):
    """`config_cls` (or `base` with changes) from values named as its flags, nested configs
    included: `build(DistillTrainConfig, teacher="small", lambda_adv=0.0)`."""
    by_name = {f.name: f.path for f in flags(config_cls, base)}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise TypeError(f"{config_cls.__name__} has no flag {', '.join(unknown)}")
    return _assemble(config_cls, {by_name[k]: v for k, v in values.items()}, base)


def from_dict(config_cls, values: dict):
    """The config that `dataclasses.asdict` turned into `values` (nested dicts, lists for tuples)."""
    hints = typing.get_type_hints(config_cls)
    kwargs = {}
    for field in dataclasses.fields(config_cls):
        if not field.init or field.name not in values:
            continue
        tp, _ = _base_type(hints[field.name])
        value = values[field.name]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value)
        elif typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[field.name] = value
    return config_cls(**kwargs)


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

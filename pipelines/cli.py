"""Typed dataclass configs <-> command-line flags, with no registry magic.

`parse(MyConfig)` builds an argparse parser from the dataclass fields (a field `clip_len`
becomes `--clip-len`, its help is the comment-free `metadata["help"]` if given), parses
`sys.argv`, and returns a `MyConfig`. Booleans take `--flag/--no-flag`; tuples and
lists take several values and the flag repeats (`--method a=x --method b=y` is the same as
`--method a=x b=y`; a given flag replaces the default, it does not add to it);
`Optional[...]` fields accept `none`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
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


def add_arguments(parser: argparse.ArgumentParser, config_cls, defaults=None) -> None:
    hints = typing.get_type_hints(config_cls)
    defaults = defaults or config_cls()
    for field in dataclasses.fields(config_cls):
        if not field.init:
            continue
        tp, optional = _base_type(hints[field.name])
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        help_text = field.metadata.get("help", "") + f" (default: {default})"
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


def parse(config_cls, argv=None, description: str | None = None, defaults=None):
    parser = argparse.ArgumentParser(description=description or (config_cls.__doc__ or "").strip())
    add_arguments(parser, config_cls, defaults)
    return from_namespace(config_cls, parser.parse_args(argv), defaults)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)

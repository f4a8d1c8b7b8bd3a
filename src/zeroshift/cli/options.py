"""Generate argparse options from a frozen dataclass, and build the dataclass back from the parse.

A field's `metadata` may hold `help`, `positional` (bool), `flag` (another spelling), `choices` and
`aliases`: old spellings (`--dataset`, or a bare `MODEL` for a former positional) that still work, hidden
from --help, each use printing a one-line deprecation note on stderr. Booleans become `--name/--no-name`;
`list[str]` fields take one or more values. Every option's help ends with its default.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

from ..io import write_json

C = TypeVar("C")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_list) of a field annotation such as `str | None` or `list[str]`."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (list, tuple):
        return (args[0] if args else str), True
    if args and typing.get_origin(tp) is not None:  # Optional[...] / X | None
        return _base_type(args[0])
    return tp, False


def command(parser: argparse.ArgumentParser, cls: type[C], run: Callable[[C], int]) -> None:
    """A command whose options are the fields of `cls`: the parse becomes `cls(...)` and is handed to `run`."""
    add_options(parser, cls)
    parser.set_defaults(run=lambda ns: run(from_args(cls, ns)))


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


class Deprecated(argparse.Action):
    """An old spelling of the option `new`: stores like it, stands in for it when it is required, and
    says on stderr which spelling to use."""

    def __init__(self, option_strings: list[str], dest: str, new: argparse.Action | None = None,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if values is None or values == []:  # a former positional left out: nothing given, nothing said
            return
        assert self.new is not None
        old = option_string or f"the positional {self.metavar}"
        new = f"{self.new.option_strings[0]} {self.new.metavar or self.new.dest.upper()}"
        print(f"zeroshift: warning: {old} is deprecated; use {new}", file=sys.stderr)
        self.new.required = False  # given: argparse's check at the end of this parse must not ask for `new`
        setattr(ns, self.dest, values)


def show_default(value: Any) -> str:
    """How --help shows a default: booleans as on/off, None as none, sequences space-separated."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "none"
    return str(value)


def _groups(cls: type) -> list[tuple[str | None, list[dataclasses.Field]]]:
    """The fields of `cls` in CLI order: its own first, then each base's that names an OPTIONS_GROUP."""
    fields = list(dataclasses.fields(cls))
    groups: list[tuple[str | None, list[dataclasses.Field]]] = []
    for base in reversed(cls.__mro__[1:]):
        title = base.__dict__.get("OPTIONS_GROUP")
        if title and dataclasses.is_dataclass(base):
            names = {f.name for f in dataclasses.fields(base)}
            groups.append((title, [f for f in fields if f.name in names]))
            fields = [f for f in fields if f.name not in names]
    return [(None, fields), *groups]


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per field of the dataclass `cls`; a base's shared options form their own group."""
    hints = typing.get_type_hints(cls)
    for title, fields in _groups(cls):
        target = parser if title is None else parser.add_argument_group(title)
        for f in fields:
            _add(target, f, hints[f.name])


def _add(parser: Any, f: dataclasses.Field, hint: Any) -> None:
    meta = f.metadata
    tp, is_list = _base_type(hint)
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
    aliases = tuple(meta.get("aliases", ()))
    help_ = meta.get("help", "")
    if not _required(f) and "default" not in help_:  # a help that names its default already keeps its words
        help_ += f" (default: {show_default(default)})"
    help_ = help_.replace("%", "%%")  # argparse formats help with %-interpolation
    name = "--" + f.name.replace("_", "-")
    if tp is bool:
        parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=help_)
        return
    kwargs: dict[str, Any] = {"type": tp if tp in (int, float) else str}
    if is_list:
        kwargs["nargs"] = "+" if _required(f) else "*"
    if "choices" in meta:
        kwargs["choices"] = meta["choices"]
    if meta.get("positional"):
        new = parser.add_argument(f.name, metavar=f.name.upper(), default=default, help=help_, **kwargs)
    else:
        flags = [name] + ([meta["flag"]] if "flag" in meta else [])
        new = parser.add_argument(*flags, dest=f.name, default=default, required=_required(f), help=help_, **kwargs)
    for alias in aliases:
        if alias.startswith("-"):
            parser.add_argument(alias, dest=f.name, action=Deprecated, new=new, help=argparse.SUPPRESS, **kwargs)
        else:  # a former positional: optional, and only ever filled when given
            parser.add_argument(f.name, metavar=alias, action=Deprecated, new=new, help=argparse.SUPPRESS,
                                default=None, **{**kwargs, "nargs": "*" if is_list else "?"})


def from_args(cls: type[C], ns: argparse.Namespace) -> C:
    """The dataclass instance holding the parsed options."""
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if isinstance(values[f.name], list) and not isinstance(f.default, list):
            values[f.name] = tuple(values[f.name])
    return cls(**values)


def write_config(config: Any, path: Path, **extra: Any) -> None:
    """Write the resolved options (plus `extra`) as JSON beside a result."""
    write_json(path, {**dataclasses.asdict(config), **extra})

"""Command options from config dataclasses: one field is one flag, its help, its default and its check.

A field made by :func:`option` carries ``help`` (text, or a function giving it) and optional metadata:
``flag`` (another spelling; a ``True``-default bool's ``--no-...`` flag stores False), ``choices``,
``positional``, ``metavar``, ``append`` (a repeatable flag), ``group`` (a help section), ``unset`` (defaults to
"not given", for a class's ``from_options``), ``always`` (written by :func:`to_argv` even at its default),
``internal`` (no flag) and ``min``/``max`` (checked by the parser and by :func:`check_numbers`, which a config's
``__post_init__`` calls). :func:`add_options`, :func:`from_namespace` and :func:`to_argv` convert between a config,
argparse and a command line, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str | Callable[[], str] = "", **meta: Any) -> Any:
    """A dataclass field that is also a command-line option (``default`` may be a list or tuple).

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     n: int = option(3, "how many")
    >>> C().n, dataclasses.fields(C)[0].metadata["help"]
    (3, 'how many')
    """
    metadata = {"help": help, **meta}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _bounds_error(f: dataclasses.Field, value: Any) -> str | None:
    """Why ``value`` is out of the field's ``min``/``max`` (or not a finite number), else None.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     n: int = option(1, "", min=1)
    >>> _bounds_error(dataclasses.fields(C)[0], 0), _bounds_error(dataclasses.fields(C)[0], float("nan"))
    ('must be at least 1, got 0', 'must be a finite number, got nan')
    """
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if lo is not None and value < lo:
        return f"must be at least {lo}, got {value}"
    if hi is not None and value > hi:
        return f"must be at most {hi}, got {value}"
    return None


def check_numbers(cfg: Any) -> None:
    """Refuse a config whose numbers are out of their fields' bounds, naming the option (``--pos-num -5: ...``)."""
    for f in dataclasses.fields(cfg):
        if "min" not in f.metadata and "max" not in f.metadata:
            continue
        value = getattr(cfg, f.name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, (int, float)) and not isinstance(item, bool) and (why := _bounds_error(f, item)):
                raise ValueError(f"{flag_of(f)} {item}: {why.split(', got')[0]}")


def _bounded(parse: Any, f: dataclasses.Field) -> Any:
    """An argparse ``type`` that parses with ``parse`` and refuses values out of the field's bounds."""

    def checked(text: str) -> Any:
        value = parse(text)
        why = _bounds_error(f, value)
        if why:
            raise argparse.ArgumentTypeError(why)
        return value

    checked.__name__ = getattr(parse, "__name__", "number")  # argparse names the type in its messages
    return checked


def _unwrap(hint: Any) -> Any:
    """The type without ``| None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def flag_of(f: dataclasses.Field) -> str:
    """The option spelling of a field.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     pos_num: int = 0
    ...     dedupe: bool = option(True, "", flag="--no-dedupe")
    >>> [flag_of(f) for f in dataclasses.fields(C)]
    ['--pos-num', '--no-dedupe']
    """
    if f.metadata.get("positional"):
        return f.name
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are command-line options (internal ones left out)."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one argument per option field of ``cls`` to ``parser`` (``dest`` is the field name)."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in cli_fields(cls):
        meta = f.metadata
        target = parser
        if meta.get("group"):
            target = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        hint = _unwrap(hints[f.name])
        default = _default(f)
        text = meta.get("help", "")
        # argparse formats help with %: a literal % in a help text (e.g. "95 %") must not break --help.
        kw: dict[str, Any] = {"help": (text() if callable(text) else text).replace("%", "%%")}
        origin = typing.get_origin(hint)
        if hint is bool:
            kw["action"] = "store_false" if default is True else "store_true"
        else:
            item = hint
            if origin in (list, tuple, Sequence):
                item = typing.get_args(hint)[0]
                if meta.get("append"):
                    kw["action"] = "append"
                else:
                    kw["nargs"] = "+"
            if typing.get_origin(item) is Literal:
                kw["choices"] = list(typing.get_args(item))
                item = type(kw["choices"][0])
            kw["type"] = item
            if "min" in meta or "max" in meta:
                kw["type"] = _bounded(kw["type"], f)
            if "choices" in meta:
                kw["choices"] = list(meta["choices"])
            if "metavar" in meta:
                kw["metavar"] = meta["metavar"]
        if meta.get("positional"):
            if default is not dataclasses.MISSING:
                kw["nargs"] = "?"
            target.add_argument(f.name, default=None if default is dataclasses.MISSING else default, **kw)
            continue
        if default is dataclasses.MISSING:
            kw["required"] = True
        elif meta.get("unset"):
            kw["default"] = None
            kw["help"] += f" (default: {default})"
        else:
            kw["default"] = list(default) if isinstance(default, tuple) and kw.get("action") == "append" else default
        target.add_argument(flag_of(f), dest=f.name, **kw)


def from_namespace(cls: type[T], args: argparse.Namespace) -> T:
    """The config of the parsed ``args`` (lists become tuples where the field is a tuple).

    ``unset`` fields not given are left out, and a class with a ``from_options`` constructor is made by it.
    """
    hints = typing.get_type_hints(cls)
    kw: dict[str, Any] = {}
    for f in cli_fields(cls):
        value = getattr(args, f.name)
        if value is None and f.metadata.get("unset"):
            continue
        if isinstance(value, list) and typing.get_origin(_unwrap(hints[f.name])) is tuple:
            value = tuple(value)
        kw[f.name] = value
    return getattr(cls, "from_options", cls)(**kw)


def _flags(f: dataclasses.Field, value: Any) -> list[str]:
    """The arguments that set field ``f`` to ``value`` (a bool's flag turns its default over)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if f.metadata.get("positional"):
        return [str(v) for v in values]
    if isinstance(value, bool):
        return [flag_of(f)]
    if f.metadata.get("append"):
        return [x for v in values for x in (flag_of(f), str(v))]
    return [flag_of(f), *map(str, values)]


def to_argv(cfg: Any) -> list[str]:
    """The arguments that parse back into ``cfg``: positionals, required fields, changed defaults.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     files: tuple[str, ...] = option(help="inputs")
    ...     seed: int = option(42, "seed")
    ...     dedupe: bool = option(True, "dedupe", flag="--no-dedupe")
    >>> to_argv(C(files=("a b.json", "c.json"), dedupe=False))
    ['--files', 'a b.json', 'c.json', '--no-dedupe']
    """
    out: list[str] = []
    for f in cli_fields(type(cfg)):
        value, default = getattr(cfg, f.name), _default(f)
        if default is not dataclasses.MISSING and value == default and not f.metadata.get("always"):
            continue
        if value is None:
            raise ValueError(f"{type(cfg).__name__}.{f.name}: None cannot be written as an option (its default is "
                             f"{default!r})")
        out += _flags(f, value)
    return out


def command_line(command: str, cfg: Any) -> str:
    """``command`` followed by :func:`to_argv` of ``cfg``, shell-quoted.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     out: str = option(help="folder")
    >>> command_line("nat build", C(out="my dir"))
    "nat build --out 'my dir'"
    """
    return " ".join([command, *(shlex.quote(a) for a in to_argv(cfg))])


def config_argv(cls: type, path: str, command: str) -> list[str]:
    """The flags a ``--config FILE.yaml`` of ``cls``'s options stands for (the command line's own flags, placed after
    them, win); every value then goes through the parser's own checks."""
    from lightning_nat.core.imports import load_yaml

    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of `{command}` options (name: value)")
    hints, known = typing.get_type_hints(cls), {f.name: f for f in cli_fields(cls)}
    argv: list[str] = []
    for key, value in data.items():
        if (f := known.get(str(key).replace("-", "_"))) is None:
            raise ValueError(f"{path}: unknown option {key!r} (`{command} --help` lists them)")
        if (hints[f.name] is bool) != isinstance(value, bool):
            raise ValueError(f"{path}: {key}: {value!r} is not {'true or false' if hints[f.name] is bool else 'a value'}")
        if value is not None and not (isinstance(value, bool) and value == _default(f)):
            argv += _flags(f, value)  # null keeps the default
    return argv

"""Command-line options generated from dataclass fields, so each option is declared once.

A field declared with :func:`option` carries its help text, flag, choices and group; the
commands add a dataclass's fields to their parser with :func:`add_options` and read them
back with :func:`values_given`. Hand-written (about 60 lines) rather than tyro or
jsonargparse, because those print their own error formats, and every bad input here must
end as one ``error:`` line with exit code 2.

Options are added with ``argparse.SUPPRESS`` as their default: an option the user did not
give is absent from the namespace, so the dataclass default applies, and a command can tell
what was given (``amc search --resume`` refuses any setting that would silently not apply).
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Iterable

MAX_SEED = 2**32 - 1
"""Seeds are unsigned 32-bit integers, as numpy's seeding takes them."""


def seed_int(text: str) -> int:
    """argparse type of a seed: an integer in [0, 2**32 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_SEED}], got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_SEED}], got {value}")
    return value


def option(default: Any = None, help: str = "", *, group: str = "", flags: tuple[str, ...] = (),
           type: Callable[[str], Any] | None = None, choices: Iterable[str] | None = None,
           nargs: str | None = None, metavar: str | None = None, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field that is also a command-line option.

    Args:
        default: the field's default (``factory`` for mutable ones).
        help: one sentence for ``--help``; the default is appended to it.
        group: which commands show it (see :func:`add_options`).
        flags: the option strings (default: ``--field-name``; a bool that defaults to True
            gets ``--no-field-name``).
    """
    meta = {"help": help, "group": group, "flags": flags, "type": type,
            "choices": tuple(choices) if choices is not None else None, "nargs": nargs, "metavar": metavar}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                groups: Iterable[str] | None = None, skip: Iterable[str] = (),
                defaults: dict[str, Any] | None = None) -> None:
    """Add an option for each field of dataclass ``cls`` in ``groups`` (None: all), but ``skip``.

    ``defaults`` are the command's own defaults where they differ from the fields' (pass
    them to the dataclass too, e.g. ``cls(**{**defaults, **values_given(args, cls)})``).
    """
    wanted = None if groups is None else set(groups)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta or f.name in skip or (wanted is not None and meta["group"] not in wanted):
            continue
        default = (defaults or {}).get(f.name, _default_of(f))
        flag = "--" + f.name.replace("_", "-")
        shown = "; off by default" if default is False else "" if default is True else f" (default {_show(default)})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta["help"] + shown}
        if isinstance(default, bool):
            flags = meta["flags"] or (("--no-" + f.name.replace("_", "-"),) if default else (flag,))
            kwargs["action"] = "store_false" if default else "store_true"
        else:
            flags = meta["flags"] or (flag,)
            for key in ("type", "choices", "nargs", "metavar"):
                if meta[key] is not None:
                    kwargs[key] = meta[key]
            if "type" not in kwargs and "choices" not in kwargs:
                kwargs["type"] = _scalar_type(f, default)
        parser.add_argument(*flags, **kwargs)


def _scalar_type(f: dataclasses.Field, default: Any) -> Callable[[str], Any]:
    text = str(f.type)
    if isinstance(default, float) or "float" in text:
        return float
    if isinstance(default, int) or "int" in text:
        return int
    return str


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return "none" if value is None else str(value)


def values_given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that the command line set (the others keep their defaults)."""
    names = {f.name for f in dataclasses.fields(cls) if "help" in f.metadata}
    return {k: v for k, v in vars(args).items() if k in names}


def flag_of(cls: type, name: str) -> str:
    """The option string of field ``name`` of ``cls``, for messages."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.metadata.get("flags"):
        return f.metadata["flags"][0]
    default = _default_of(f)
    return ("--no-" if default is True else "--") + name.replace("_", "-")

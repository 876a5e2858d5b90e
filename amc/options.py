"""Command-line options generated from dataclass fields, so each option is declared once.

A field declared with :func:`option` carries its help text, flag, choices and group; the
commands add a dataclass's fields to their parser with :func:`add_options` and read them
back with :func:`values_given`. Hand-written (about 60 lines) rather than tyro or
jsonargparse, because those print their own error formats, and every bad input here must
end as one ``error:`` line with exit code 2.

Options are added with ``argparse.SUPPRESS`` as their default: an option the user did not
give is absent from the namespace, so the dataclass default applies, and a command can tell
what was given (``amc search --resume`` refuses any setting that would silently not apply).

Every number is range-checked while the command line is parsed, before anything is loaded
or written: a field's value goes through its dataclass's own ``validate()`` (so the message
is the one a script calling the dataclass gets, e.g. ``--batch-size must be >= 1, got 0``),
and through ``lo``/``hi`` bounds given to :func:`option` for what ``validate()`` leaves to
later stages; a float that neither refuses is still refused when NaN or infinite. Hand-written
options take :func:`bounded` as their type. A value out of range raises :class:`OptionError`,
which the command line prints as one ``error:`` line.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
from typing import Any, Callable, Iterable

from amc.errors import AmcError

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


class OptionError(AmcError):
    """A number out of range on the command line (raised while parsing; one ``error:`` line)."""


class Bounds:
    """A closed or open range of numbers, and the sentence that names it (``>= 1``, ``in (0, 1]``).

    Non-finite floats are always out of range. ``what`` replaces the generated sentence.
    """

    def __init__(self, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                 hi_open: bool = False, what: str | None = None) -> None:
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        if what is None:
            if lo is not None and hi is not None:
                what = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            elif lo is not None:
                what = f"{'>' if lo_open else '>='} {lo}"
            elif hi is not None:
                what = f"{'<' if hi_open else '<='} {hi}"
            else:
                what = "a finite number"
        self.what = what

    def problem(self, value: float) -> str | None:
        """None when ``value`` is in range, else ``must be <what>, got <value>``."""
        ok = math.isfinite(value)
        if ok and self.lo is not None:
            ok = value > self.lo if self.lo_open else value >= self.lo
        if ok and self.hi is not None:
            ok = value < self.hi if self.hi_open else value <= self.hi
        return None if ok else f"must be {self.what}, got {value}"


def bounded(kind: Callable[[str], Any], flag: str, lo: float | None = None, hi: float | None = None, *,
            lo_open: bool = False, hi_open: bool = False, what: str | None = None) -> Callable[[str], Any]:
    """argparse ``type`` of a hand-written number option: ``kind`` (int or float), range-checked.

    ``bounded(int, "--trials", 1)`` refuses ``--trials 0`` with ``--trials must be >= 1, got 0``.
    """
    return _checked(kind, flag, [Bounds(lo, hi, lo_open, hi_open, what)], None)


def _checked(kind: Callable[[str], Any], flag: str, bounds: list[Bounds],
             probe: Callable[[Any], str | None] | None) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        value = kind(text)  # a ValueError here is argparse's "invalid int value: 'x'"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for b in bounds:
                problem = b.problem(value)
                if problem:
                    raise OptionError(f"{flag} {problem}")
        message = probe(value) if probe is not None else None
        if message:
            raise OptionError(message)
        if isinstance(value, float) and not math.isfinite(value):  # what no check above names: no float is NaN
            raise OptionError(f"{flag} must be a finite number, got {value}")
        return value

    convert.__name__ = getattr(kind, "__name__", "value")  # argparse names the type in its own errors
    convert.amc_range_checked = True  # type: ignore[attr-defined]  (tests/test_options.py looks for it)
    return convert


def option(default: Any = None, help: str = "", *, group: str = "", flags: tuple[str, ...] = (),
           type: Callable[[str], Any] | None = None, choices: Iterable[str] | None = None,
           nargs: str | None = None, metavar: str | None = None, factory: Callable[[], Any] | None = None,
           lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
           what: str | None = None, negatable: bool = False) -> Any:
    """A dataclass field that is also a command-line option.

    Args:
        default: the field's default (``factory`` for mutable ones).
        help: one sentence for ``--help``; the default is appended to it.
        group: which commands show it (see :func:`add_options`).
        flags: the option strings (default: ``--field-name``; a bool that defaults to True
            gets ``--no-field-name``).
        negatable: a bool gets both ``--field-name`` and ``--no-field-name``, whatever its
            default (for a default that changed: scripts that name the old one keep working).
        lo, hi, lo_open, hi_open, what: bounds checked at parse time (see :class:`Bounds`),
            for a number the dataclass's ``validate()`` does not check itself (each value of a
            list option is checked).
    """
    bounds = Bounds(lo, hi, lo_open, hi_open, what) if (lo is not None or hi is not None or what) else None
    meta = {"help": help, "group": group, "flags": flags, "type": type,
            "choices": tuple(choices) if choices is not None else None, "nargs": nargs, "metavar": metavar,
            "bounds": bounds, "negatable": negatable}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                groups: Iterable[str] | None = None, skip: Iterable[str] = (),
                defaults: dict[str, Any] | None = None, only: Iterable[str] | None = None) -> None:
    """Add an option for each field of dataclass ``cls`` in ``groups`` (None: all), but ``skip``.

    ``defaults`` are the command's own defaults where they differ from the fields' (pass
    them to the dataclass too, e.g. ``cls(**{**defaults, **values_given(args, cls)})``);
    ``only`` keeps just these fields of the groups.
    """
    wanted = None if groups is None else set(groups)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta or f.name in skip or (wanted is not None and meta["group"] not in wanted) \
                or (only is not None and f.name not in only):
            continue
        default = (defaults or {}).get(f.name, _default_of(f))
        flag = "--" + f.name.replace("_", "-")
        on = "; on by default" if meta.get("negatable") else ""  # a --no-X flag says it by itself
        shown = "; off by default" if default is False else on if default is True else f" (default {_show(default)})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta["help"] + shown}
        if isinstance(default, bool) and meta.get("negatable"):
            flags, kwargs["action"] = (flag,), argparse.BooleanOptionalAction
        elif isinstance(default, bool):
            flags = meta["flags"] or (("--no-" + f.name.replace("_", "-"),) if default else (flag,))
            kwargs["action"] = "store_false" if default else "store_true"
        else:
            flags = meta["flags"] or (flag,)
            for key in ("type", "choices", "nargs", "metavar"):
                if meta[key] is not None:
                    kwargs[key] = meta[key]
            if "type" not in kwargs and "choices" not in kwargs:
                kwargs["type"] = _scalar_type(f, default)
            if kwargs.get("type") is not None and "choices" not in kwargs and _numeric(f):
                bounds = [meta["bounds"]] if meta.get("bounds") else []
                kwargs["type"] = _checked(kwargs["type"], flags[0], bounds,
                                          _validate_probe(cls, f, flags, defaults or {}))
        parser.add_argument(*flags, **kwargs)


def _numeric(f: dataclasses.Field) -> bool:
    text = str(f.type)
    return "int" in text or "float" in text


_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _validate_probe(cls: type, f: dataclasses.Field, flags: tuple[str, ...],
                    defaults: dict[str, Any]) -> Callable[[Any], str | None] | None:
    """Check one parsed value with the dataclass's own ``validate()``, the other fields at their
    defaults; returns its message when the message is about this option alone.

    A message that names another option too (``--episodes (10) must be greater than --warmup
    (10)``) depends on values not parsed yet, and is left to the full ``validate()`` after parsing.
    """
    if not callable(getattr(cls, "validate", None)):
        return None
    names = {fl for fl in flags if fl.startswith("--")}

    def probe(value: Any) -> str | None:
        value = [value] if f.metadata.get("nargs") else value
        try:
            cls(**{**defaults, f.name: value}).validate()
        except AmcError as e:
            message = str(e)
            named = set(_FLAG.findall(message))
            if named and named <= names and any(message.startswith(n + " ") for n in names):
                return message
        except (TypeError, ValueError):
            return None
        return None

    return probe


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
    if f.metadata.get("negatable"):
        return "--" + name.replace("_", "-")
    return ("--no-" if default is True else "--") + name.replace("_", "-")

"""The one exception type the CLI turns into ``error: ...`` and exit code 2."""


import sys

_warned: set[str] = set()


def warn_once(message: str) -> None:
    """One ``warning: <message>`` line on stderr, once per command (see :func:`forget_warnings`)."""
    if message not in _warned:
        _warned.add(message)
        sys.stderr.write(f"warning: {message}\n")
        sys.stderr.flush()


def forget_warnings() -> None:
    """Each command (each call of :func:`amc.cli.main`) says each warning once."""
    _warned.clear()


class AmcError(Exception):
    """Bad input from the user: a path, a spec, weights, data or a number out of range.

    The message is one line, written for the user, and is printed as ``error: <message>``.
    """

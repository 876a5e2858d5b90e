"""The one exception type the CLI turns into ``error: ...`` and exit code 2."""


class AmcError(Exception):
    """Bad input from the user: a path, a spec, weights, data or a number out of range.

    The message is one line, written for the user, and is printed as ``error: <message>``.
    """

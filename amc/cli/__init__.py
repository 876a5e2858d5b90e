"""The ``amc`` command line.

The CLI sits on top of the stack (engine <- envs <- agents <- CLI): it is the one part of
the ``amc`` package that may import ``agents``, and it does so lazily, inside ``amc search``.
"""
from __future__ import annotations

import argparse
import contextlib
import sys

from amc.errors import AmcError, forget_warnings


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other bad input
        sys.stderr.write(f"error: {message} (see: {self.prog} --help)\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from amc.cli import (bench, eval as eval_cmd, export, finetune, latency, prune, quantize, report, search, sweep,
                         train)

    parser = _Parser(prog="amc", description="AMC: AutoML for Model Compression. Prune a trained CNN "
                     "to a FLOPs budget with a DDPG agent, then fine-tune, export and measure it.")
    parser.add_argument("--version", action="version", version="amc 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in (train, eval_cmd, prune, search, report, finetune, export, quantize, latency, bench, sweep):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``amc ARGV``; returns the exit code.

    Bad input (:class:`~amc.errors.AmcError`, a number out of range while parsing included)
    is one ``error:`` line and 2; Ctrl-C at any moment, the imports of the commands
    included, is one line and 130 (a search saves its state first: see ``amc search``).
    """
    program = argv is None  # the real command line, not a call from Python
    forget_warnings()
    try:
        with _interrupts_held():
            parser = build_parser()  # imports torch (its C++ start-up must not see a KeyboardInterrupt)
        argv = sys.argv[1:] if argv is None else list(argv)
        args = parser.parse_args(argv)
        args._argv = argv  # recorded in checkpoints, so a run can be repeated
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args) or 0)
    except AmcError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    finally:
        if program:
            _ignore_interrupts_from_now_on()


@contextlib.contextmanager
def _interrupts_held():
    """Hold a Ctrl-C back while torch and numpy are imported, and raise it once they are.

    A KeyboardInterrupt raised inside torch's C++ initialisation (pybind11 calling back into
    Python) aborts the process (``std::terminate``) or marks it as killed by SIGINT, whatever
    Python code catches it; held back to the end of the import, it is an ordinary one.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        import numpy  # noqa: F401
        import torch  # noqa: F401

        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


def _ignore_interrupts_from_now_on() -> None:
    """The command has finished and said so: a Ctrl-C while the interpreter shuts down
    (flushing TensorBoard's writer thread, say) must not print a traceback after it."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

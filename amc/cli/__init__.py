"""The ``amc`` command line.

The CLI sits on top of the stack (engine <- envs <- agents <- CLI): it is the one part of
the ``amc`` package that may import ``agents``, and it does so lazily, inside ``amc search``.
"""
from __future__ import annotations

import argparse
import sys

from amc.errors import AmcError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other bad input
        sys.stderr.write(f"error: {message} (see: {self.prog} --help)\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from amc.cli import bench, eval as eval_cmd, export, finetune, prune, report, search, train

    parser = _Parser(prog="amc", description="AMC: AutoML for Model Compression. Prune a trained CNN "
                     "to a FLOPs budget with a DDPG agent, then fine-tune, export and measure it.")
    parser.add_argument("--version", action="version", version="amc 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in (train, eval_cmd, prune, search, report, finetune, export, bench):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args._argv = argv  # recorded in checkpoints, so a run can be repeated
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except AmcError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130

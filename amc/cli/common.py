"""Options and helpers shared by several commands (the spec's options come from :mod:`amc.options`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from amc.errors import AmcError
from amc.options import add_options, bounded, values_given
from amc.spec import PruneSpec


def add_spec(p: argparse.ArgumentParser, *groups: str, skip: tuple[str, ...] = ()) -> None:
    """The :class:`~amc.spec.PruneSpec` options of ``groups`` (model, data, pruner, budget)."""
    add_options(p, PruneSpec, groups, skip)


def add_latency_target(p: argparse.ArgumentParser) -> None:
    """The model, its data and the latency target: what a latency table is built for."""
    from amc.spec import DATA, LATENCY, MODEL, PRUNER

    add_spec(p, MODEL, DATA, LATENCY)
    add_options(p, PruneSpec, [PRUNER], only=("channel_round", "coupled"))


def spec_from(args: argparse.Namespace, **fixed: Any) -> PruneSpec:
    """The PruneSpec the command line describes (``fixed`` overrides), validated."""
    return PruneSpec(**{**values_given(args, PruneSpec), **fixed}).validate()


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="where to compute (default cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.add_argument("--threads", type=bounded(int, "--threads", 1), default=None,
                   help="torch CPU threads (default: torch's choice)")


def setup_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None) is not None:
        import torch

        if args.threads < 1:
            raise AmcError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def fresh_out_dir(path: str) -> Path:
    """An output folder that does not yet hold results (see :func:`amc.checkpoint.fresh_dir`)."""
    from amc.checkpoint import fresh_dir

    return fresh_dir(path, "--out")


def out_or_resume(path: str, resume: bool, command: str) -> Path:
    """``--out`` of a command that can ``--resume``: an existing folder when resuming, else a fresh one."""
    if resume:
        out = Path(path)
        if not out.is_dir():
            raise AmcError(f"--resume: {out} is not a folder of {command}")
        return out
    return fresh_out_dir(path)


def emit(result: dict[str, Any], as_json: bool, table: str | None = None) -> None:
    """Print ``table`` for people, or ``result`` as the last line of stdout for machines."""
    if as_json:
        print(json.dumps(result, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    else:
        print(table if table is not None else json.dumps(result, indent=2, default=str))
    sys.stdout.flush()


def absolute(path: str | None) -> str | None:
    """Recorded in run files: absolute, so the run can be used from any folder."""
    return str(Path(path).resolve()) if path else None

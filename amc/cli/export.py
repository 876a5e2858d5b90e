"""``amc export``: not built yet."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="(coming soon)")
    p.set_defaults(func=None)

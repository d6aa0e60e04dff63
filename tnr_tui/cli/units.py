"""`tnr-lab units [solvers|guidance|schedules]`: every registered unit, its summary and its parameters."""

from __future__ import annotations

import argparse
from typing import Any

KINDS = ("solvers", "guidance", "schedules")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "units",
        help="list the solvers, guidance methods and schedules with their parameters",
        description="List the registered solvers, guidance methods and schedules, with their parameters.",
    )
    p.add_argument("kind", nargs="?", choices=KINDS, help="one kind only (default: all three)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine import units
    from tnr_tui.cli.unit_options import describe

    registries = {"solvers": units.SOLVERS, "guidance": units.GUIDANCE, "schedules": units.SCHEDULES}
    chosen = [args.kind] if args.kind else list(KINDS)
    for i, kind in enumerate(chosen):
        if len(chosen) > 1:
            print(("\n" if i else "") + f"# {kind}")
        print(describe(registries[kind]))
    return 0

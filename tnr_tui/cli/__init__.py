"""The `tnr-lab` command. Each subcommand lives in its own module of this package and registers itself
through `add_parser(subparsers)` / `run(args) -> int`; heavy libraries load inside `run` only.

Errors meant for the user are raised as `UserError` (or `engine.request.RequestError`) and printed as one
line on stderr with exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# Subcommand modules, in the order `--help` lists them. A module missing here is a bug, not a feature flag.
SUBCOMMANDS = ("generate", "history", "sweep", "study")


THREADS_HELP = (
    "torch CPU threads for the lab and generate (default: 1 on machines with 2 cores or fewer, where two threads "
    "ran 3-5x slower next to one busy process; else torch's default; 0 = torch's default; env TNR_LAB_THREADS)"
)


class UserError(Exception):
    """An error caused by the user's input or environment; printed without traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tnr-lab",
        description="A terminal lab for diffusion-model sampling. With no command, opens the lab (TUI).",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="where the history and outputs live (default: $TNR_LAB_HOME or the platform's user data dir)",
    )
    parser.add_argument(
        "--image-protocol",
        default=os.environ.get("TNR_LAB_IMAGE_PROTOCOL", "auto"),
        choices=("auto", "tgp", "sixel", "halfcell", "unicode", "none"),
        help="how the TUI draws images (env: TNR_LAB_IMAGE_PROTOCOL)",
    )
    parser.add_argument("--model", default=None, help="model for the TUI (default: the embedded model)")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"tnr_tui.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"tnr_tui.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from engine.request import RequestError

    try:
        if args.command is None:
            from tnr_tui.app import run_app

            return run_app(args)
        return int(args.func(args) or 0)
    except (UserError, RequestError) as e:
        from tnr_tui.text import visible  # messages quote user input (paths, prompts, record fields)

        print(f"tnr-lab: error: {visible(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tnr-lab: interrupted", file=sys.stderr)
        return 130

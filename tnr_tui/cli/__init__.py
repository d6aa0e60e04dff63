"""The `tnr-lab` command. Each subcommand lives in its own module of this package and registers itself
through `add_parser(subparsers)` / `run(args) -> int`; heavy libraries load inside `run` only.

Errors meant for the user are raised as `UserError` (or `engine.request.RequestError`) and printed as one
line on stderr with exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence

from tnr_tui.cli.errors import UserError

# Subcommand modules, in the order `--help` lists them. A module missing here is a bug, not a feature flag.
SUBCOMMANDS = ("generate", "history", "sweep", "study", "units")


THREADS_HELP = (
    "torch CPU threads for the lab and generate (default: 1 on machines with 2 cores or fewer, where two threads "
    "ran 3-5x slower next to one busy process; else torch's default; 0 = torch's default; env TNR_LAB_THREADS)"
)


# The top-level options that take a value (--data-dir DIR): the command line of the lab itself is these alone.
_LAB_VALUE_OPTIONS = ("--data-dir", "--history-url", "--outputs", "--image-protocol", "--model", "--threads")


def opens_the_lab(argv: Sequence[str]) -> bool:
    """Whether argv is only top-level options (`tnr-lab --data-dir D`): the lab, whose parser needs none of the
    commands' (their modules and ~160 arguments were ~10-15 ms of the lab's start). Anything else, a command,
    a typo or --help, gets the whole parser and its messages."""
    tokens = iter(argv)
    for token in tokens:
        if token in _LAB_VALUE_OPTIONS:
            if next(tokens, None) is None:
                return False  # let the whole parser say the value is missing
        elif not any(token.startswith(option + "=") for option in _LAB_VALUE_OPTIONS):
            return False
    return True


def build_parser(with_commands: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tnr-lab",
        allow_abbrev=False,  # --tnr must never be taken for --tnr-power
        description="A terminal lab for diffusion-model sampling. With no command, opens the lab (TUI).",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="where the history and outputs live (default: $TNR_LAB_HOME or the platform's user data dir)",
    )
    parser.add_argument(
        "--history-url",
        default=None,
        metavar="URL",
        help="a shared history on PostgreSQL (postgresql+psycopg://host/db) instead of the SQLite file in the data "
        "dir, for every command and the lab (env: TNR_LAB_HISTORY_URL; needs pip install 'tnr-lab[postgres]')",
    )
    parser.add_argument(
        "--outputs",
        default=None,
        metavar="DIR",
        help="where the history's images and latents live (default: DATA_DIR/outputs); give a directory every "
        "host sees for a shared history, else a PostgreSQL history also keeps each file in the database "
        "(env: TNR_LAB_OUTPUTS)",
    )
    parser.add_argument(
        "--image-protocol",
        default=os.environ.get("TNR_LAB_IMAGE_PROTOCOL", "auto"),
        choices=("auto", "tgp", "sixel", "halfcell", "unicode", "none"),
        help="how the TUI draws images (env: TNR_LAB_IMAGE_PROTOCOL)",
    )
    parser.add_argument("--model", default=None, help="model for the TUI (default: the embedded model)")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    if not with_commands:
        parser.set_defaults(command=None)
        return parser
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_NoAbbrevParser)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"tnr_tui.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"tnr_tui.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


class _NoAbbrevParser(argparse.ArgumentParser):
    """Subcommand parsers: no abbreviations of long options (argparse's default would read --tnr as --tnr-power)."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like ctrl-c: a run in progress is recorded `cancelled`, temp files are removed."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated("terminated (SIGTERM)")


def _stdout_gone() -> int:
    """The reader of stdout went away (`| head`): stop quietly, as `cat` would, exit 128 + SIGPIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's last flush cannot fail again
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return 128 + 13


# Arguments only ever opened as files: a path in a non-UTF-8 file name is the filesystem's business and works.
# Every other string is stored in the history or sent to it as text (a prompt, a model path, a search, an id).
_FILE_ONLY_ARGS = frozenset({"out", "save_latent", "file", "files", "data_dir"})


def _not_utf8(args: argparse.Namespace) -> str | None:
    """One line naming the first argument that is not UTF-8 text, or None.

    Python hands a byte of argv that is not UTF-8 (a Latin-1 prompt typed in a terminal set to another
    encoding) over as a lone surrogate; the history stores UTF-8 only, so the first query or insert with it
    failed with a UnicodeEncodeError traceback. Said once here, before any command opens anything.
    """
    from tnr_tui.services.text import visible

    def strings(value: object) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)):
            return [s for v in value for s in strings(v)]
        return []

    for dest, value in vars(args).items():
        if dest in _FILE_ONLY_ARGS:
            continue
        for text in strings(value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                name = "the run id" if dest == "id" else "--" + dest.replace("_", "-")
                return f"{name} '{visible(text)}' is not UTF-8 text (a byte in another encoding); give it in UTF-8"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    lab = opens_the_lab(given)
    from engine import collector

    if lab:
        collector.hold()  # the garbage collector, off until the lab's first frame: ~40-70 ms of its start
    try:
        return _main(given, lab)
    finally:
        collector.release()  # if the first frame or the model's load did not turn it back on


def _main(given: list[str], lab: bool) -> int:
    parser = build_parser(with_commands=not lab)
    args = parser.parse_args(given)
    from engine import collector
    from engine.request import RequestError

    if args.command == "generate":
        # Off while torch imports, until its model is loaded (load_bundle turns it back on, frozen: the process
        # ends after its images): ~1 s of a 5 s generate. Not for sweeps and studies: one on Ray never loads a
        # model here, and runs for hours.
        collector.hold(freeze_at_release=True)

    bad = _not_utf8(args)
    if bad is not None:
        print(f"tnr-lab: error: {bad}", file=sys.stderr)
        return 2

    # Commands only: the TUI keeps the default SIGTERM. signal() works in the main thread alone.
    previous = None
    if args.command is not None and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.command is None:
            from tnr_tui.cli.lab import run_app

            return run_app(args)
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below, not at exit
        return code
    except (UserError, RequestError) as e:
        from tnr_tui.services.text import visible  # messages quote user input (paths, prompts, record fields)

        print(f"tnr-lab: error: {visible(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _stdout_gone()
    except Terminated:
        print("tnr-lab: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("tnr-lab: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # A HistoryError that no command worded itself (a sweep that finds the history held or full stops at
        # that cell): its message is for the user as it is (docs/history.md). Looked up, not imported: a
        # command that never opened the history need not load SQLAlchemy to say so.
        errors = sys.modules.get("tnr_tui.services.history.errors")
        if errors is None or not isinstance(e, errors.HistoryError):
            raise
        from tnr_tui.services.text import visible

        print(f"tnr-lab: error: {visible(e)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

"""`tnr-lab` with only top-level options opens the lab through a parser without the commands' (their modules and
~160 arguments were 10-15 ms of the lab's start): the same namespace as the whole parser gives, and anything
else (a command, a typo, --help, a missing value) still gets the whole parser and its messages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tnr_tui.cli import build_parser, opens_the_lab

LAB_LINES = [
    [],
    ["--data-dir", "/tmp/somewhere"],
    ["--data-dir=/tmp/x", "--image-protocol", "halfcell", "--threads", "2"],
    ["--model", "/models/sdxl", "--history-url", "postgresql+psycopg://h/db", "--outputs", "/shared/out"],
    ["--data-dir", "history"],  # a value that is a command's name is still the option's value
]
OTHER_LINES = [
    ["history", "list"],
    ["generate", "--prompt", "x", "--out", "o.png"],
    ["--data-dir", "/d", "units"],
    ["genrate"],
    ["--help"],
    ["-h"],
    ["--threads"],
    ["--bogus"],
]


@pytest.mark.parametrize("argv", LAB_LINES)
def test_the_labs_own_line_parses_as_the_whole_parser_parses_it(argv: list[str]) -> None:
    assert opens_the_lab(argv)
    fast = build_parser(with_commands=False).parse_args(argv)
    whole = build_parser().parse_args(argv)
    assert vars(fast) == vars(whole) and fast.command is None


@pytest.mark.parametrize("argv", OTHER_LINES)
def test_anything_else_gets_the_whole_parser(argv: list[str]) -> None:
    assert not opens_the_lab(argv)


def test_the_lab_starts_without_importing_the_commands(tmp_path) -> None:
    script = (
        "import sys; import tnr_tui.cli as cli; import tnr_tui.cli.lab as lab\n"
        "lab.run_app = lambda args: print(args.command, sorted(m for m in sys.modules if m.startswith('tnr_tui.cli.')"
        " and m not in ('tnr_tui.cli.errors', 'tnr_tui.cli.lab'))) or 0\n"
        f"sys.exit(cli.main(['--data-dir', {str(tmp_path)!r}]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "None []"


def test_a_bad_value_for_a_lab_option_is_still_refused_with_the_options_name(capsys) -> None:
    from tnr_tui.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--image-protocol", "bogus"])
    assert exit_info.value.code == 2
    assert "argument --image-protocol: invalid choice: 'bogus'" in capsys.readouterr().err

"""An argument that is not UTF-8 (a byte Python hands over as a lone surrogate) is one line, never a traceback.

Found by the hostile pass of issue 10: `history list --search $'\\xff'`, `history show $'\\xff'` and
`generate --prompt $'\\xff'` ended in a UnicodeEncodeError from the database driver.
"""

from __future__ import annotations

import pytest

from tnr_tui.cli import _not_utf8, build_parser, main
from tnr_tui.services.history import open_store

BAD = "a\udcffb"  # what os.fsdecode makes of b"a\xffb"


@pytest.fixture
def home(tmp_path):
    data = tmp_path / "home"
    store = open_store(data)
    run_id = store.create_run({"prompt": "circle", "solver": "euler", "guidance": "cfg", "steps": 2, "tags": {}})
    store.finish_run(run_id, "done")
    store.close()
    return data


@pytest.mark.parametrize(
    "args,named",
    [
        (["history", "list", "--search", BAD], "--search"),
        (["history", "list", "--sweep", BAD], "--sweep"),
        (["history", "show", BAD], "the run id"),
        (["history", "steps", BAD], "the run id"),
        (["history", "export", "--format", "jsonl", "--out", "x.jsonl", "--search", BAD], "--search"),
    ],
)
def test_a_history_command_names_the_argument(home, capsys, args, named):
    assert main(["--data-dir", str(home), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tnr-lab: error: {named} 'a\\udcffb' is not UTF-8 text")
    assert err.count("\n") == 1


def test_generate_refuses_a_prompt_before_loading_anything():
    args = build_parser().parse_args(["generate", "--prompt", BAD, "--out", "x.png"])
    assert _not_utf8(args).startswith("--prompt 'a\\udcffb' is not UTF-8 text")
    args = build_parser().parse_args(["generate", "--prompt", "ok", "--lora", BAD, "--out", "x.png"])
    assert _not_utf8(args).startswith("--lora ")


def test_file_only_paths_may_be_any_bytes():
    # Opened as files, never stored as text: a Latin-1 file name works as the filesystem allows.
    args = build_parser().parse_args(["generate", "--prompt", "ok", "--out", f"{BAD}.png"])
    assert _not_utf8(args) is None
    args = build_parser().parse_args(["history", "import", f"{BAD}.zip"])
    assert _not_utf8(args) is None

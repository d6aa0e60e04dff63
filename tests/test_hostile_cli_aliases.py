"""A1111 / ComfyUI names on the command line: `tnr-lab units` lists them ("also Euler a, DPM++ 2M ...") and the
README says they are aliases, so every flag that names a solver, guidance method or schedule takes them.

They were refused by generate, sweep, study and the history's filters ("unknown solver 'Euler'").
"""

from __future__ import annotations

import json

import pytest

from engine.request import parse_field
from tnr_tui.cli import main
from tnr_tui.services.history import RunFilter
from tnr_tui.services.sweep import parse_list


@pytest.mark.parametrize(
    ("field", "text", "name"),
    [
        ("solver", "Euler a", "euler_ancestral"),
        ("solver", "DPM++ 2M", "dpmpp_2m"),
        ("solver", " k_lms ", "lms"),
        ("guidance", "CFG", "cfg"),
        ("guidance", "cfg_pp", "cfg++"),
        ("schedule", "Karras", "karras"),
    ],
)
def test_parse_field_takes_a_units_aliases(field: str, text: str, name: str) -> None:
    assert parse_field(field, text) == name


def test_parse_field_still_refuses_an_unknown_unit() -> None:
    from engine.request import RequestError

    with pytest.raises(RequestError, match="unknown solver 'nope'"):
        parse_field("solver", "nope")


def test_history_filters_take_aliases() -> None:
    f = RunFilter(solver="DPM++ 2M", guidance="CFG", schedule="Karras")
    assert (f.solver, f.guidance, f.schedule) == ("dpmpp_2m", "cfg", "karras")


def test_sweep_lists_take_aliases() -> None:
    from engine.request import SOLVERS
    from engine.units import SOLVERS as REGISTRY

    assert parse_list("Euler a, DPM++ 2M,euler", SOLVERS, "solver", REGISTRY) == (
        "euler_ancestral",
        "dpmpp_2m",
        "euler",
    )


def test_generate_with_a1111_names_records_the_units(tmp_path, tiny_sdxl_dir, capsys) -> None:
    rc = main(
        [
            "--data-dir",
            str(tmp_path / "home"),
            "generate",
            "--model",
            str(tiny_sdxl_dir),
            "--prompt",
            "a red circle",
            "--solver",
            "Euler a",
            "--eta",
            "0.5",
            "--guidance",
            "CFG",
            "--schedule",
            "Karras",
            "--steps",
            "2",
            "--width",
            "64",
            "--height",
            "64",
            "--out",
            str(tmp_path / "o.png"),
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    run_id = json.loads(captured.out)["run_id"]
    rc = main(["--data-dir", str(tmp_path / "home"), "history", "show", run_id, "--json"])
    request = json.loads(capsys.readouterr().out)["request"]
    assert (request["solver"], request["guidance"], request["schedule"]) == ("euler_ancestral", "cfg", "karras")
    assert request["solver_params"] == {"eta": 0.5}
    rc = main(["--data-dir", str(tmp_path / "home"), "history", "list", "--solver", "Euler a", "--json"])
    assert rc == 0 and [r["id"] for r in json.loads(capsys.readouterr().out)] == [run_id]


def test_sweep_with_a1111_names_runs_the_units(tmp_path, tiny_sdxl_dir, capsys) -> None:
    rc = main(
        [
            "--data-dir",
            str(tmp_path / "home"),
            "sweep",
            "--model",
            str(tiny_sdxl_dir),
            "--prompt",
            "a red circle",
            "--guidance",
            "CFG",
            "--scales",
            "cfg=3",
            "--solvers",
            "DPM++ 2M",
            "--schedule",
            "Karras",
            "--steps",
            "2",
            "--seeds",
            "1",
            "--width",
            "64",
            "--height",
            "64",
            "--out",
            str(tmp_path / "sweep"),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    spec = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["spec"]
    assert (spec["methods"], spec["solvers"], spec["schedule"]) == (["cfg"], ["dpmpp_2m"], "karras")


def test_sweep_scales_take_a_methods_alias() -> None:
    from tnr_tui.services.sweep import parse_scales

    assert parse_scales(["CFG_PP=0.4,0.8"]) == {"cfg++": (0.4, 0.8)}

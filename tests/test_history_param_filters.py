"""`history list --solver-param NAME=VALUE` / `--guidance-param NAME=VALUE` (issue 11: the history's filters come
from the registries): the value is parsed by the unit's Param (eta=1 matches 1.0), a run that left the parameter
out matches its unit's default, only units that have the parameter match, and a bad name or value is one line.
Through the CLI on SQLite (the plain query and the prompt-search path); the same filters on PostgreSQL where a
local server starts (skipped as tests/test_history_postgres.py skips).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.request import GenerationRequest
from tnr_tui.cli import main
from tnr_tui.services.history import RunFilter, open_store


def made(**kw: Any) -> dict[str, Any]:
    return GenerationRequest(prompt=kw.pop("prompt", "a fox"), steps=4, **kw).to_dict()


# name -> the stored request (as the lab writes it, or as older code and hand-written requests did)
RUNS: dict[str, dict[str, Any]] = {
    "anc_eta1": made(solver="euler_ancestral", solver_params={"eta": 1.0}),
    "anc_eta_half": made(solver="euler_ancestral", solver_params={"eta": 0.5, "s_noise": 1.0}),
    "anc_default": made(solver="euler_ancestral"),  # eta left out: its default, 1.0
    "ddim_default": made(solver="ddim"),  # ddim's eta defaults to 0
    "euler": made(solver="euler"),  # no eta at all: never matches
    "sde_int_eta": {**made(solver="dpmpp_sde"), "solver_params": {"eta": 1}},  # an integer in the JSON
    "format1_sde": {  # a format-1 request: no parameter dicts
        "prompt": "a fox",
        "solver": "dpmpp_2m_sde",
        "guidance": "cfg",
        "steps": 4,
        "seed": 0,
        "format": 1,
    },
    "apg_eta0": made(guidance="apg", guidance_params={"eta": 0.0}, prompt="a cat"),
    "apg_default": made(guidance="apg", prompt="a cat"),
    "tcfg_original": made(guidance="tcfg", guidance_params={"use_original_formulation": True}),
    "dual_style": made(guidance="dual-cfg", guidance_params={"style": "nested", "cond2": "1"}),
}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    data = tmp_path_factory.mktemp("params") / "home"
    ids = {}
    with open_store(data) as store:
        for name, request in RUNS.items():
            ids[store.create_run(request)] = name
            store.finish_run(next(reversed(ids)), "done")
    return data, ids


def names(home: tuple[Path, dict[str, str]], capsys: Any, *flags: str) -> list[str]:
    data, ids = home
    assert main(["--data-dir", str(data), "history", "list", "--json", *flags]) == 0
    return sorted(ids[r["id"]] for r in json.loads(capsys.readouterr().out))


EXPECTED = [
    (["--solver-param", "eta=1"], ["anc_default", "anc_eta1", "format1_sde", "sde_int_eta"]),
    (["--solver-param", "eta=1.0", "--solver", "euler_ancestral"], ["anc_default", "anc_eta1"]),
    (["--solver-param", "eta=0.5"], ["anc_eta_half"]),
    (["--solver-param", "eta=0"], ["ddim_default"]),
    (["--solver-param", "eta=0.5", "--solver-param", "s-noise=1"], ["anc_eta_half"]),  # both must hold
    (["--solver-param", "eta=1", "--search", "fox"], ["anc_default", "anc_eta1", "format1_sde", "sde_int_eta"]),
    (["--solver-param", "eta=1", "--search", "cat"], []),
    (["--guidance-param", "eta=0"], ["apg_eta0"]),
    (["--guidance-param", "eta=1"], ["apg_default"]),
    (["--guidance-param", "use_original_formulation=yes"], ["tcfg_original"]),
    (["--guidance-param", "use_original_formulation=off", "--guidance", "tcfg"], []),
    (["--guidance-param", "style=nested"], ["dual_style"]),
    (["--guidance-param", "style=regular"], []),
    (["--guidance-param", "cond2=1"], ["dual_style"]),  # a text parameter: the text "1", not the number
]


@pytest.mark.parametrize("flags,expected", EXPECTED)
def test_list_filters_by_unit_parameters(home, capsys, flags, expected):
    assert names(home, capsys, *flags) == expected


def test_export_takes_the_same_filters(home, tmp_path, capsys):
    data, ids = home
    out = tmp_path / "eta.jsonl"
    args = ["--data-dir", str(data), "history", "export", "--format", "jsonl", "--out", str(out)]
    assert main([*args, "--solver-param", "eta=0.5"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert sorted(ids[r["id"]] for r in rows if "id" in r) == ["anc_eta_half"]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--solver-param", "etaa=1"], "no solver has a parameter 'etaa'"),
        (["--guidance-param", "zeta=1"], "no guidance method has a parameter 'zeta'"),
        (
            ["--solver", "euler", "--solver-param", "eta=1"],
            "the solver 'euler' has no parameter 'eta' (these have: euler_ancestral,",
        ),
        (["--solver-param", "eta=fast"], "eta must be a number, got 'fast'"),
        (["--solver-param", "eta=-1"], "eta must be at least 0"),
        (["--guidance-param", "style=odd"], "style must be one of"),
        (["--solver-param", "eta"], "--solver-param expects NAME=VALUE, got 'eta'"),
    ],
)
def test_a_bad_parameter_filter_is_one_line(home, capsys, flags, message):
    data, _ = home
    assert main(["--data-dir", str(data), "history", "list", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_postgresql_filters_the_same_runs(tmp_path, pg_url):
    url = pg_url  # a new database of the session's server (tests/conftest.py)
    with open_store(tmp_path, url=url) as store:
        ids = {store.create_run(request): name for name, request in RUNS.items()}
        for flags, expected in EXPECTED:
            pairs: dict[str, list[tuple[str, str]]] = {"solver_params": [], "guidance_params": []}
            other: dict[str, str] = {}
            for flag, value in zip(flags[::2], flags[1::2], strict=True):
                if flag.endswith("-param"):
                    name, _, text = value.partition("=")
                    pairs[flag[2:].replace("-", "_") + "s"].append((name, text))
                else:
                    other[{"--search": "text"}.get(flag, flag[2:])] = value
            filters = RunFilter(
                solver_params=tuple(pairs["solver_params"]),
                guidance_params=tuple(pairs["guidance_params"]),
                **other,
            )
            assert sorted(ids[r.id] for r in store.list_runs(filters)) == expected, flags
            assert store.count_runs(filters) == len(expected), flags

"""The rooms of ARCHITECTURE.md: each package imported in a fresh interpreter loads only what it may.

The TUI must paint before torch loads, the history commands must start in well under a second, and the
engine must stay free of UI code.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers")


def modules_after(code: str) -> set[str]:
    """Top-level package names in sys.modules after running `code` in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_probe_sees_what_is_imported():
    # Guard against a probe that cannot fail: a room that does import torch shows up.
    assert "torch" in modules_after("import engine.decoder")


@pytest.mark.parametrize(
    "code",
    [
        "import tnr_tui",
        "import tnr_tui.cli",
        'import tnr_tui.cli as c; c.build_parser().parse_args(["generate", "--prompt", "x", "--out", "x.png"])',
        "import engine",
        "import engine.request",
        "import tnr_tui.ui.app",
        # every unit of every registry, declared and instantiable without torch (the TUI builds its panels first)
        "from engine import units\n"
        "for r in (units.SOLVERS, units.GUIDANCE, units.SCHEDULES):\n"
        "    assert r.names()\n"
        "from engine.request import GenerationRequest\n"
        "for s in units.SOLVERS.names():\n"
        "    GenerationRequest(prompt='x', solver=s).model_evaluations\n"
        "for g in units.GUIDANCE.names():\n"
        "    GenerationRequest(prompt='x', guidance=g).model_evaluations",
    ],
)
def test_tui_and_cli_parsing_load_no_heavy_library(code):
    loaded = modules_after(code)
    assert not loaded & set(HEAVY), f"{code!r} imported {sorted(loaded & set(HEAVY))}"


def test_history_loads_neither_torch_nor_textual():
    loaded = modules_after("import tnr_tui.services.history")
    assert not loaded & {"torch", "textual", "diffusers", "transformers"}


@pytest.mark.parametrize(
    "code",
    [
        "import engine",
        # every module of the engine (entry points excluded: importing them must not start work anyway)
        "import importlib, pkgutil, engine\n"
        "for m in pkgutil.walk_packages(engine.__path__, 'engine.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)",
    ],
)
def test_engine_loads_no_ui_or_storage(code):
    loaded = modules_after(code)
    assert not loaded & {"textual", "textual_image", "sqlalchemy", "tnr_tui"}

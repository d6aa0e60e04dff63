#!/usr/bin/env bash
# Installs tnr-lab into ./.venv (a fresh virtual environment next to this file's repository).
# torch is installed first so that its build is your choice: TORCH_SPEC="torch==2.5.1" bash scripts/install.sh
# keeps a CUDA build you need; the default pins the release the lab is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${TNR_LAB_VENV:-.venv}
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
"$VENV/bin/python" -m pip install -q -e '.[dev]'
# The lab's own modules, compiled once: where PYTHONDONTWRITEBYTECODE is set (as on this project's machines)
# Python never writes their bytecode, and every start of the lab compiled its ~100 modules again (~90 ms of
# its first frame). Python still reads these; an edited module is compiled again in memory, as before.
"$VENV/bin/python" -m compileall -q engine tnr_tui >/dev/null
echo "installed: $("$VENV/bin/tnr-lab" --help | head -1)"

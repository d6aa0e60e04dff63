"""`tnr-lab sweep --ray local`: a Ray cluster started for the run on loopback, two CPU workers, every cell in the
history once, and nothing of the cluster left running when the command ends."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Before Ray loads (collection imports this module first): every cluster of the tests binds to loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
pytestmark = pytest.mark.slow  # ~30 s: a cluster start and two workers loading torch

RAY_DAEMONS = ("raylet", "gcs_server")


def ray_daemons() -> set[int]:
    """Pids of Ray's cluster processes on this host (any cluster)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(name in command.split(" ")[0] for name in RAY_DAEMONS):
            found.add(int(entry.name))
    return found


def test_sweep_on_a_local_ray_cluster_that_stops_with_the_command(tiny_sdxl_dir, tmp_path):
    from tnr_tui.services.history import RunFilter, open_store

    before = ray_daemons()
    home = tmp_path / "home"
    env = {**os.environ, "TNR_LAB_HOME": str(home), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tnr_tui", "sweep", "--model", str(tiny_sdxl_dir), "--prompt", "a red circle"]
    command += ["--guidance", "none", "--seeds", "1-4", "--steps", "3", "--batch", "2", "--out", str(tmp_path / "s")]
    command += ["--ray", "local", "--ray-workers", "2"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ray: 2 CPU (1 thread each) worker(s) on a local Ray cluster (loopback)" in done.stderr
    assert "images/s" in done.stdout and "[4/4]" in done.stdout
    assert "4 run, 0 already done, 0 failed of 4" in done.stdout
    store = open_store(home)
    runs = list(store.iter_runs(RunFilter(status="done")))
    assert len(runs) == 4 and len({r.request["seed"] for r in runs}) == 4
    store.close()
    deadline = time.monotonic() + 20
    while ray_daemons() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_daemons() - before, "the local cluster outlived the command"

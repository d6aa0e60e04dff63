"""A history written by tnr-lab 0.1 (before the rooms-and-units change) re-runs bit-identically today.

tests/data/history-0.1 was made at commit c598330 with `tnr-lab generate --save-latent` on the embedded model
(10 runs over every solver, guidance method and schedule kind of that version, the N-prompt form, a guidance
window, CFG rescale, a negative prompt and a non-native size; see tests/data/README.md). Every stored request
must still parse, and sampling it again must give the stored latent exactly and the stored PNG's pixels.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

LEGACY = Path(__file__).parent / "data" / "history-0.1"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def legacy_home(tmp_path: Path) -> Path:
    home = tmp_path / "legacy-home"
    shutil.copytree(LEGACY, home)
    return home


def test_every_legacy_run_resamples_to_its_stored_latent_and_pixels(legacy_home):
    from safetensors.torch import load_file

    from engine.models import load_bundle
    from engine.request import GenerationRequest
    from engine.sampler import sample
    from tnr_tui.services.history import open_store

    bundle = load_bundle("embedded")
    store = open_store(legacy_home)
    try:
        runs = list(store.iter_runs())
        assert len(runs) == 10 and all(run.status == "done" for run in runs)
        for run in runs:
            request = GenerationRequest.from_dict(run.request)
            result = sample(bundle, request)
            stored = load_file(str(store.resolve(run.output("latent").path)))["latent"]
            assert result.latent.shape == stored.shape, run.id
            assert bool((result.latent == stored).all()), f"run {run.id} ({run.solver}, {run.guidance}) drifted"
            with Image.open(store.resolve(run.output("image").path)) as im:
                pixels = np.asarray(im.convert("RGB"))
            assert np.array_equal(np.asarray(result.image), pixels), run.id
    finally:
        store.close()


def test_history_rerun_of_a_legacy_run_reports_bit_identical(legacy_home):
    args = [sys.executable, "-m", "tnr_tui", "--data-dir", str(legacy_home), "history"]
    listing = subprocess.run([*args, "list", "--json"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert listing.returncode == 0, listing.stderr
    import json

    first = json.loads(listing.stdout)[0]["id"]
    out = subprocess.run([*args, "rerun", first], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "bit-identical" in out.stdout

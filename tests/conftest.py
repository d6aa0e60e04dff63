"""Shared fixtures: a tiny random SDXL-topology model directory and an isolated data directory."""

from __future__ import annotations

import os
from pathlib import Path

# One intra-op thread unless the caller says otherwise: the test models are tiny, where a second OpenMP
# thread only adds synchronisation, and on a busy host spinning threads made the suite 4x slower (measured).
# Set before anything imports torch, which reads it once.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import gc

import pytest


@pytest.fixture(autouse=True)
def _no_frozen_objects_left():
    """`tnr-lab generate` called in this process freezes what exists at its model's load (engine/collector.py),
    as its own process should; a test process is not that one, so what a test froze is unfrozen after it. And
    no command or app may leave the collector off but while a model loads (engine/collector.py)."""
    yield
    if gc.get_freeze_count():
        gc.unfreeze()
    from engine import collector

    # Held is allowed: a lab's worker thread may still be loading a model after its app has quit.
    assert gc.isenabled() or collector.is_held(), "the test left Python's garbage collector off"


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SDXL-topology diffusers directory saved with `save_pretrained` (built once per session).

    Two CLIP text encoders of different widths, `text_time` added conditioning, a VAE with the SDXL decoder's
    block structure, SDXL's EulerDiscreteScheduler config, tokenizers trained on the fly. Tests load it through
    the real loader (`engine.models.load_bundle(str(tiny_sdxl_dir))`). Treat it as read-only: copy it first
    to modify it.
    """
    from engine.models.tiny import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "tiny-sdxl")


@pytest.fixture
def tmp_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh lab data directory: TNR_LAB_HOME points at it for the duration of the test."""
    data_dir = tmp_path / "tnr-lab-home"
    data_dir.mkdir()
    monkeypatch.setenv("TNR_LAB_HOME", str(data_dir))
    return data_dir


@pytest.fixture(scope="session")
def tiny_sd15_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SD 1.5-topology directory (engine.models.tiny.build_tiny_sd, family "sd1"): one
    quick_gelu CLIP text encoder, no added conditioning, SD 1.5's published scheduler config (no
    timestep_spacing). Read-only, like tiny_sdxl_dir."""
    from engine.models.tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd15") / "tiny-sd15", "sd1")


@pytest.fixture(scope="session")
def tiny_sd2v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SD 2.x 768-v-topology directory (family "sd2"): gelu text encoder padding with "!",
    linear projections, upcast_attention, v-prediction. Read-only."""
    from engine.models.tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd2v") / "tiny-sd2v", "sd2")


@pytest.fixture(scope="session")
def tiny_sdxl_vzsnr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SDXL fixture's weights with a v-prediction, zero-terminal-SNR, trailing scheduler config
    (NoobAI-XL v-pred's kind). Read-only."""
    from engine.models.tiny import build_tiny_sdxl

    return build_tiny_sdxl(
        tmp_path_factory.mktemp("tiny-sdxl-vzsnr") / "tiny-sdxl-vzsnr", prediction_type="v_prediction", zero_snr=True
    )


@pytest.fixture(scope="session")
def pg_server():
    """One throwaway local PostgreSQL for the session (localpg.LocalPostgres: Debian's or pgserver's binaries),
    shared by every module that needs one (a server takes ~7 s to start here); skipped with the reason where
    psycopg is missing or no server can start."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'tnr-lab[postgres]')")
    from tnr_tui.services.history.localpg import LocalPostgres, NoServer

    try:
        server = LocalPostgres().start()
    except NoServer as e:
        pytest.skip(f"no local PostgreSQL could start: {e}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server, request) -> str:
    """A new empty database of the session's server, named after the test, as a SQLAlchemy URL."""
    import hashlib

    return pg_server.create_database("t_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16])

"""Sweeps on a local Ray cluster of two CPU workers (loopback only): every cell lands once, a worker killed
mid-cell costs nothing but a retry, and a driver interrupted mid-sweep resumes where it stopped.

One cluster for the module (Ray takes ~8 s to start here, each worker a few seconds to load the tiny model).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # the node's address is 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")

from tnr_tui.services.dispatch.ray_driver import RayDispatcher  # noqa: E402
from tnr_tui.services.dispatch.worker import BatchWorker  # noqa: E402

pytestmark = pytest.mark.slow  # ~60 s for the module on two cores


@pytest.fixture(scope="module")
def cluster():
    import logging

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    # Test workers are defined here: ship them by value (the workers need not import this module).
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        nodes = ray.nodes()
        assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in nodes), nodes  # loopback only
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def workers(cluster, tiny_sdxl_dir, tmp_path_factory):
    """Two long-lived CPU workers for the module's sweeps (each driver run below uses them, as it would an
    existing cluster's), holding batches a moment while `marks/hold` exists."""
    marks = tmp_path_factory.mktemp("marks")
    SlowWorker.marks = str(marks)
    dispatcher = RayDispatcher("local", str(tiny_sdxl_dir), workers=2, worker_class=SlowWorker, log=lambda _: None)
    try:
        yield dispatcher, marks
    finally:
        dispatcher.close()
        SlowWorker.marks = ""


class SlowWorker(BatchWorker):
    """A worker that says (a file named by its pid in `marks`) when it holds a batch, then holds it a moment."""

    marks = ""  # set before the workers start: the class travels by value, with it

    def run(self, batch):  # noqa: ANN001, ANN201
        if self.marks and Path(self.marks, "hold").exists():
            Path(self.marks, str(os.getpid())).write_text(str(batch.batch_id))
            time.sleep(1.5)
        return super().run(batch)


def spec(seeds: str = "1-6"):  # 2 methods x 6 seeds = 12 cells, 6 batches of 2
    from tnr_tui.services.sweep import SweepSpec, parse_seeds

    return SweepSpec(
        prompts=("a red circle",),
        methods=("none", "cfg"),
        scales={"cfg": (4.0,)},
        seeds=parse_seeds(seeds),
        steps=3,
        width=64,
        height=64,
    )


def done_runs(store, sweep_id: str) -> Counter:
    from tnr_tui.services.history import RunFilter
    from tnr_tui.services.sweep.spec import cell_key_of_request

    return Counter(cell_key_of_request(r.request) for r in store.iter_runs(RunFilter(sweep=sweep_id, status="done")))


def the_spec_with(model: Path):
    from dataclasses import replace

    return replace(spec(), model=str(model))


def test_every_cell_once_and_a_killed_worker_is_retried(workers, tiny_sdxl_dir, tmp_data_dir, tmp_path):
    from tnr_tui.services.history import RunFilter, open_store
    from tnr_tui.services.sweep import plan, run_sweep

    dispatcher, marks = workers
    assert len(dispatcher.actors) == 2
    pids = set(dispatcher.worker_pids())
    (marks / "hold").write_text("")
    killed: list[int] = []

    def kill_the_first_worker_holding_a_batch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for mark in marks.iterdir():
                if mark.name.isdigit() and int(mark.name) in pids:
                    os.kill(int(mark.name), signal.SIGKILL)  # mid-cell: it sleeps while it holds the batch
                    killed.append(int(mark.name))
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_first_worker_holding_a_batch, daemon=True)
    killer.start()
    store = open_store(tmp_data_dir)
    sweep = the_spec_with(tiny_sdxl_dir)
    lines: list[str] = []
    try:
        report = run_sweep(sweep, tmp_path / "out", store, dispatcher=dispatcher, batch=2, log=lines.append)
    finally:
        (marks / "hold").unlink()
    killer.join(5)
    assert killed, "no worker was seen holding a batch"
    cells = plan(sweep)
    assert report.total == len(cells) == 12 and report.ran == 12 and report.failed == 0
    counts = done_runs(store, report.sweep_id)
    assert set(counts) == {c.key for c in cells} and set(counts.values()) == {1}  # every cell once, none twice
    # The lost batch's rows were not duplicated: every run of the sweep is done (a retry reuses its rows).
    statuses = Counter(r.status for r in store.iter_runs(RunFilter(sweep=report.sweep_id)))
    assert statuses == Counter({"done": 12}), statuses
    assert any("retried" in line for line in lines), lines
    assert any("images/s" in line for line in lines)
    csv_rows = (tmp_path / "out" / "sweep.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + 12
    store.close()


def test_an_interrupted_driver_resumes(workers, tiny_sdxl_dir, tmp_data_dir, tmp_path):
    from tnr_tui.services.history import RunFilter, open_store
    from tnr_tui.services.sweep import plan, run_sweep

    dispatcher, _ = workers
    sweep = the_spec_with(tiny_sdxl_dir)
    store = open_store(tmp_data_dir)
    seen = []

    def interrupt_after_three(line: str) -> None:
        if line.startswith("  ["):  # an image recorded (progress lines start unindented)
            seen.append(line)
            if len(seen) == 3:
                raise KeyboardInterrupt  # ctrl-c while batches are still out on the workers

    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, tmp_path / "out", store, dispatcher=dispatcher, batch=2, log=interrupt_after_three)
    first = done_runs(store, sweep.sweep_id(_identity(store)))
    assert 3 <= sum(first.values()) < 12
    assert list(store.iter_runs(RunFilter(status="running"))) == []  # what was out is closed, not left running

    report = run_sweep(sweep, tmp_path / "out", store, dispatcher=dispatcher, batch=2, log=lambda _: None)
    assert report.skipped == sum(first.values()) and report.ran == 12 - report.skipped
    counts = done_runs(store, report.sweep_id)
    assert set(counts) == {c.key for c in plan(sweep)} and set(counts.values()) == {1}
    store.close()


def _identity(store) -> str:
    from tnr_tui.services.history import RunFilter

    runs = list(store.iter_runs(RunFilter(status="done")))
    return runs[0].model_identity


def test_a_study_on_ray_workers_matches_this_process(workers, tiny_sdxl_dir):
    """The study's arms on the Ray workers give the numbers of the same batches sampled here (same batch
    sizes, same CPU: bit-identical images), results arriving in any order."""
    from engine.models import load_bundle
    from tnr_tui.services.dispatch import LocalDispatcher
    from tnr_tui.services.study import StudyConfig, single_arms
    from tnr_tui.services.study.running import run_arms

    dispatcher, _ = workers
    cfg = StudyConfig(samples=4, steps=3, model=str(tiny_sdxl_dir), prompts=("a red circle", "a blue square"))
    arms = single_arms(cfg)
    on_ray = run_arms(arms, cfg, None, embedded=False, log=lambda _: None, dispatcher=dispatcher, batch=2)
    here = LocalDispatcher(load_bundle(str(tiny_sdxl_dir), device="cpu"), cfg.model)
    local = run_arms(arms, cfg, None, embedded=False, log=lambda _: None, dispatcher=here, batch=2)
    for arm in arms:
        assert on_ray[arm].values == local[arm].values and on_ray[arm].evaluations == local[arm].evaluations

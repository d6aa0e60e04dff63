"""tnr_tui.services.runs.execute on the tiny model: the row is `running` while sampling, then points at complete files;
cancel and failure are recorded; the PNG carries the request."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from engine.request import GenerationRequest
from tnr_tui.services.history import open_store
from tnr_tui.services.history.store import sha256_file
from tnr_tui.services.runs import execute


@pytest.fixture(scope="module")
def bundle(tiny_sdxl_dir):
    from engine.models import load_bundle

    return load_bundle(str(tiny_sdxl_dir), device="cpu")


def tiny_request(tiny_sdxl_dir, **kw):
    base = dict(
        prompt="a red circle", negative_prompt="blue", model=str(tiny_sdxl_dir), steps=3, seed=7, width=64, height=64
    )
    base.update(kw)
    return GenerationRequest(**base)


def test_execute_records_a_done_run_pointing_at_complete_files(tmp_path, bundle, tiny_sdxl_dir):
    store = open_store(tmp_path / "home")
    seen_status = []

    def on_step(event):
        # Another connection sees the run as running, with this process's pid, while it samples.
        with open_store(tmp_path / "home", recover=False) as other:
            run = other.list_runs(limit=1)[0]
            seen_status.append((run.status, run.pid is not None, run.outputs))

    latent_path = tmp_path / "latent.safetensors"
    outcome = execute(tiny_request(tiny_sdxl_dir), store, bundle=bundle, on_step=on_step, save_latent=latent_path)
    assert outcome.status == "done"
    assert seen_status and all(s == ("running", True, []) for s in seen_status)

    run = store.get_run(outcome.run_id)
    assert run.status == "done" and run.finished_at >= run.started_at
    assert run.model_evaluations == outcome.model_evaluations == 6  # 3 euler steps x (cond + uncond)
    assert run.seconds > 0 and run.device == "cpu" and run.dtype == "float32"
    assert run.model_identity == bundle.identity and run.versions["torch"] == torch.__version__
    assert set(run.metrics) >= {"colourfulness", "contrast", "saturation", "dynamic_range"}
    assert len(run.stats["sigmas"]) == 4 and run.stats["sigmas"][-1] == 0.0
    assert (run.width, run.height) == (64, 64)

    image, latent = run.output("image"), run.output("latent")
    image_path = store.resolve(image.path)
    assert image_path.parent.parent == store.outputs_dir and image_path.name == f"{run.id}.png"
    assert image.sha256 == sha256_file(image_path) and image.size == image_path.stat().st_size
    assert latent.sha256 == sha256_file(latent_path) == sha256_file(store.resolve(latent.path))
    assert store.resolve(latent.path).parent.parent == store.outputs_dir  # the history's own copy
    saved = load_file(str(latent_path))
    assert list(saved) == ["latent"] and torch.equal(saved["latent"], outcome.result.latent)
    with Image.open(image_path) as im:
        assert im.size == (64, 64)
        assert json.loads(im.text["tnr-lab"])["request"] == run.request
        assert im.text["parameters"].startswith("a red circle\nNegative prompt: blue\nSteps: 3, Sampler: Euler")
    # no temporary files, here or beside the user's latent
    assert sorted(p.name for p in image_path.parent.iterdir()) == [f"{run.id}.png", f"{run.id}.safetensors"]
    assert [p.name for p in latent_path.parent.iterdir() if p.name.startswith(".")] == []


def test_should_stop_records_a_cancelled_run_without_files(tmp_path, bundle, tiny_sdxl_dir):
    store = open_store(tmp_path / "home")
    steps = []
    outcome = execute(
        tiny_request(tiny_sdxl_dir, steps=5),
        store,
        bundle=bundle,
        on_step=steps.append,
        should_stop=lambda: len(steps) >= 2,
    )
    assert outcome.status == "cancelled" and len(steps) == 2
    run = store.get_run(outcome.run_id)
    assert run.status == "cancelled" and run.outputs == []
    assert list(store.outputs_dir.rglob("*.png")) == []


class NaNBundle:
    """The tiny bundle with a UNet that returns NaN: the sampler must stop and name the step."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def eps(self, x, sigma, t, cond):
        return torch.full_like(self._inner.eps(x, sigma, t, cond), float("nan"))


def test_a_sampling_failure_is_recorded_as_failed_and_re_raised(tmp_path, bundle, tiny_sdxl_dir):
    from engine.sampler import SamplingError

    store = open_store(tmp_path / "home")
    with pytest.raises(SamplingError, match="step"):
        execute(tiny_request(tiny_sdxl_dir), store, bundle=NaNBundle(bundle))
    run = store.list_runs()[0]
    assert run.status == "failed" and "SamplingError" in run.error and "step" in run.error
    assert run.outputs == []


def test_a_missing_model_is_recorded_as_failed(tmp_path):
    from engine.models import ModelError

    store = open_store(tmp_path / "home")
    with pytest.raises(ModelError, match="no such file or directory"):
        execute(GenerationRequest(prompt="x", model=str(tmp_path / "nowhere")), store)
    run = store.list_runs()[0]
    assert run.status == "failed" and "nowhere" in run.error


def test_a_queued_run_is_started_in_place(tmp_path, bundle, tiny_sdxl_dir):
    store = open_store(tmp_path / "home")
    request = tiny_request(tiny_sdxl_dir, steps=1)
    queued = store.create_run(request, status="queued", origin="tui")
    outcome = execute(request, store, bundle=bundle, run_id=queued, out=tmp_path / "q.png")
    assert outcome.run_id == queued and store.count_runs() == 1
    run = store.get_run(queued)
    assert run.status == "done" and run.origin == "tui"
    assert sha256_file(store.resolve(run.output("image").path)) == sha256_file(tmp_path / "q.png")


def test_overwriting_an_out_path_later_loses_nothing_the_history_recorded(tmp_path, bundle, tiny_sdxl_dir):
    store = open_store(tmp_path / "home")
    out = tmp_path / "same.png"
    first = execute(tiny_request(tiny_sdxl_dir, steps=1, seed=1), store, bundle=bundle, out=out)
    first_bytes = out.read_bytes()
    second = execute(tiny_request(tiny_sdxl_dir, steps=1, seed=2), store, bundle=bundle, out=out)
    assert out.read_bytes() != first_bytes  # the user's file is the latest run's
    for outcome in (first, second):
        image = store.get_run(outcome.run_id).output("image")
        assert sha256_file(store.resolve(image.path)) == image.sha256  # each run keeps its own picture
    assert store.resolve(store.get_run(first.run_id).output("image").path).read_bytes() == first_bytes


def test_an_unwritable_latent_path_is_an_os_error_naming_it(tmp_path, bundle, tiny_sdxl_dir):
    store = open_store(tmp_path / "home")
    target = tmp_path / "blocked" / "l.safetensors"
    (tmp_path / "blocked").write_text("a file where a directory should be")
    with pytest.raises(OSError) as caught:
        execute(tiny_request(tiny_sdxl_dir, steps=1), store, bundle=bundle, save_latent=target)
    assert caught.value.filename is not None and ".tmp" not in str(caught.value.filename)
    assert store.list_runs()[0].status == "failed"
    assert list(store.outputs_dir.rglob("*.*")) == []  # a failed run leaves no files in the history's folder


def test_rewriting_an_out_file_in_place_leaves_the_historys_copy_alone(tmp_path, bundle, tiny_sdxl_dir):
    store = open_store(tmp_path / "home")
    out = tmp_path / "o.png"
    outcome = execute(tiny_request(tiny_sdxl_dir, steps=1), store, bundle=bundle, out=out)
    with open(out, "r+b") as handle:  # an editor saving in place, not by rename
        handle.write(b"not a png any more")
    image = store.get_run(outcome.run_id).output("image")
    assert sha256_file(store.resolve(image.path)) == image.sha256


def test_runs_of_the_embedded_model_store_the_checkers_verdicts(tmp_path, tiny_sdxl_dir, monkeypatch):
    from engine.toy import check

    # The tiny random model stands in for the embedded one: its pictures are noise, the verdicts still real.
    monkeypatch.setenv("TNR_LAB_EMBEDDED_MODEL", str(tiny_sdxl_dir))
    store = open_store(tmp_path / "home")
    prompt = "a red circle on a blue background"
    embedded = execute(tiny_request(tiny_sdxl_dir, prompt=prompt, model="embedded"), store)
    monkeypatch.delenv("TNR_LAB_EMBEDDED_MODEL")  # now the tiny directory is just another model
    other = execute(tiny_request(tiny_sdxl_dir, prompt=prompt), store)

    verdict = check(embedded.image, prompt)
    metrics = store.get_run(embedded.run_id).metrics
    assert metrics["check_colour"] == float(verdict.shape_colour)
    assert metrics["check_background"] == float(verdict.background)
    assert metrics["check_shape"] == float(verdict.shape)
    assert metrics["check_all"] == float(verdict.all)
    assert not any(k.startswith("check_") for k in store.get_run(other.run_id).metrics)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_the_png_and_the_latent_follow_the_umask_like_any_file(tmp_path, bundle, tiny_sdxl_dir, umask):
    """safetensors' save_file made the latent 0600 whatever the umask; now both are 0666 & ~umask."""
    store = open_store(tmp_path / "home")
    previous = os.umask(umask)
    try:
        outcome = execute(
            tiny_request(tiny_sdxl_dir, steps=1),
            store,
            bundle=bundle,
            out=tmp_path / "mine.png",
            save_latent=tmp_path / "mine.safetensors",
        )
    finally:
        os.umask(previous)
    run = store.get_run(outcome.run_id)
    files = [store.resolve(o.path) for o in run.outputs] + [tmp_path / "mine.png", tmp_path / "mine.safetensors"]
    assert len(files) == 4
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o666 & ~umask for f in files}

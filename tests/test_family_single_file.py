"""Single-file checkpoints of every family (issue 14, item 3): the family from the keys, the v_pred / ztsnr
markers, --prediction-type / --zero-snr overrides, and a round trip (one file in the original key layout
samples the same latents as the directory it was written from)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine.models import ModelError, load_bundle
from engine.models.tiny import sdxl_scheduler_config, write_single_file
from engine.request import GenerationRequest
from engine.sampler import sample

PROMPT = "a red circle on a white background"


def config_dir_of(model_dir, dest, scheduler: dict | None = None):
    """The model's JSON configs and tokenizers without weights (what a single file needs beside it)."""
    shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    if scheduler is not None:
        (dest / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return dest


def request(**kw) -> GenerationRequest:
    return GenerationRequest(
        prompt=PROMPT, width=64, height=64, seed=7, steps=5, scale=4.0, preview_every=0, cfg_rescale=0.0, **kw
    )


@pytest.mark.parametrize("which", ["tiny_sd15_dir", "tiny_sd2v_dir", "tiny_sdxl_vzsnr_dir"])
def test_a_single_file_samples_the_latents_of_its_directory(which, request_fixture, tmp_path):
    model_dir = request_fixture.getfixturevalue(which)
    v = which != "tiny_sd15_dir"
    zsnr = which == "tiny_sdxl_vzsnr_dir"
    checkpoint = write_single_file(model_dir, tmp_path / "model.safetensors", v_pred=v, ztsnr=zsnr)
    # The config directory's scheduler says epsilon (and, for SDXL, SDXL base's leading schedule): the
    # file's markers are what make it a v / zero-SNR model, as ComfyUI and A1111 read them.
    scheduler = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    scheduler["prediction_type"] = "epsilon"
    if zsnr:
        scheduler = sdxl_scheduler_config()
    config = config_dir_of(model_dir, tmp_path / "config", scheduler)
    single = load_bundle(str(checkpoint), config=config)
    directory = load_bundle(str(model_dir))
    assert single.family is directory.family
    assert single.prediction_type == directory.prediction_type
    assert single.zero_snr == directory.zero_snr
    assert len(single.notes) == int(v) + int(zsnr)
    ours, theirs = sample(single, request()), sample(directory, request())
    assert ours.stats["schedule"] == theirs.stats["schedule"]
    assert torch.allclose(ours.latent, theirs.latent, rtol=0, atol=1e-5 * float(theirs.latent.abs().max()))


@pytest.fixture
def request_fixture(request):
    return request


def test_overrides_change_the_prediction_without_a_reload(tiny_sd2v_dir, tmp_path):
    checkpoint = write_single_file(tiny_sd2v_dir, tmp_path / "sd2.safetensors")  # no marker
    scheduler = json.loads((tiny_sd2v_dir / "scheduler" / "scheduler_config.json").read_text())
    scheduler["prediction_type"] = "epsilon"
    config = config_dir_of(tiny_sd2v_dir, tmp_path / "config", scheduler)
    single = load_bundle(str(checkpoint), config=config)
    assert single.prediction_type == "epsilon"  # SD 2.x without a marker: the config directory decides
    directory = load_bundle(str(tiny_sd2v_dir))
    unet = single.unet
    as_v = sample(single, request(prediction_type="v_prediction"))
    assert single.unet is unet and single.prediction_type == "v_prediction"
    assert torch.allclose(as_v.latent, sample(directory, request()).latent, atol=1e-5)
    plain = sample(single, request())  # the next run without the override: the file's own again
    assert single.prediction_type == "epsilon" and not torch.allclose(plain.latent, as_v.latent)
    zsnr = sample(single, request(prediction_type="v_prediction", zero_snr=True))
    assert zsnr.stats["schedule"] == "trailing" and zsnr.stats["sigmas"][0] == pytest.approx(4096.0, rel=1e-6)


def test_the_family_must_match_the_config_directory(tiny_sd15_dir, tiny_sdxl_dir, tmp_path):
    checkpoint = write_single_file(tiny_sd15_dir, tmp_path / "sd15.safetensors")
    config = config_dir_of(tiny_sdxl_dir, tmp_path / "xl-config")
    with pytest.raises(ModelError, match=r"sd15\.safetensors: the checkpoint is SD 1\.5, but its config directory"):
        load_bundle(str(checkpoint), config=config)


def test_an_unknown_family_is_one_line_naming_what_was_found(tmp_path, tmp_data_dir, capsys):
    from safetensors.torch import save_file

    from tnr_tui.cli import main

    odd = tmp_path / "flux-like.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2), "img_in.weight": torch.zeros(2)}, odd)
    with pytest.raises(ModelError, match=r"not an SD 1\.5, SD 2\.x or SDXL checkpoint: no UNet .* found double_blocks"):
        load_bundle(str(odd))
    code = main(["generate", "--model", str(odd), "--prompt", "x", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "flux-like.safetensors: not an SD 1.5, SD 2.x or SDXL checkpoint" in err and "double_blocks" in err


def test_generate_takes_prediction_and_zero_snr_flags(tiny_sd2v_dir, tmp_path, tmp_data_dir, capsys):
    from safetensors.torch import load_file

    from tnr_tui.cli import main

    latent = tmp_path / "z.safetensors"
    args = ["generate", "--model", str(tiny_sd2v_dir), "--prompt", PROMPT, "--steps", "3", "--out"]
    code = main([*args, str(tmp_path / "a.png"), "--zero-snr", "--save-latent", str(latent), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "SD 2.x, v-prediction, zero terminal SNR" in out.err
    summary = json.loads(out.out)
    assert torch.isfinite(load_file(latent)["latent"]).all() and summary["steps"] == 3
    code = main([*args, str(tmp_path / "b.png"), "--prediction-type", "epsilon", "--no-zero-snr"])
    assert code == 0 and "SD 2.x, eps-prediction" in capsys.readouterr().err

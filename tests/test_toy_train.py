"""Training smoke test: the recipe runs end to end on tiny sizes and its output loads through the real loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.toy import train as toy_train


@pytest.fixture(scope="module")
def tiny_trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "model"
    argv = ["--out", str(out), "--seed", "3", "--size", "tiny", "--images", "48", "--vae-steps", "3"]
    assert toy_train.main([*argv, "--unet-steps", "4"]) == 0
    return out


def test_training_writes_an_sdxl_directory_with_log_summary_and_preview_factors(tiny_trained: Path) -> None:
    index = json.loads((tiny_trained / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["force_zeros_for_empty_prompt"] is True
    summary = json.loads((tiny_trained / "training.json").read_text())
    assert (summary["vae_steps"], summary["unet_steps"], summary["partial"]) == (3, 4, False)
    # the decoder polish is part of the recipe: the tiny size's own default count
    assert summary["decoder_steps"] == toy_train.SIZES["tiny"].decoder_steps == 2
    assert "--size tiny --vae-steps 3 --decoder-steps 2 --unet-steps 4" in summary["command"]
    log_lines = (tiny_trained / "training_log.tsv").read_text().splitlines()
    assert log_lines[0].split("\t") == ["stage", "step", "loss", "lr", "seconds"]
    assert list(dict.fromkeys(line.split("\t")[0] for line in log_lines[1:])) == ["vae", "decoder", "unet"]
    latent_rgb = json.loads((tiny_trained / "latent_rgb.json").read_text())
    assert len(latent_rgb["factors"]) == 4 and all(len(row) == 3 for row in latent_rgb["factors"])
    assert len(latent_rgb["bias"]) == 3
    vae = json.loads((tiny_trained / "vae" / "config.json").read_text())
    assert vae["scaling_factor"] != pytest.approx(0.18215)  # computed from the latents, not a default


def test_trained_weights_are_float16_safetensors(tiny_trained: Path) -> None:
    from safetensors import safe_open

    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        files = list((tiny_trained / component).glob("*.safetensors"))
        assert len(files) == 1, component
        with safe_open(str(files[0]), "pt") as handle:
            dtypes = {handle.get_tensor(key).dtype for key in handle.keys()}
        assert dtypes == {torch.float16}, component


def test_the_trained_directory_loads_with_load_bundle_and_samples(tiny_trained: Path) -> None:
    from engine.models import load_bundle
    from engine.request import GenerationRequest
    from engine.sampler import sample

    bundle = load_bundle(str(tiny_trained), device="cpu")
    assert bundle.default_size == (64, 64)
    request = GenerationRequest(prompt="a red circle on a blue background", steps=3, preview_every=0)
    result = sample(bundle, request)
    assert result.image.size == (64, 64)
    assert result.stats["model_evaluations"] == 6


def test_the_tokenizers_give_one_token_per_grammar_word() -> None:
    tokenizer, tokenizer_2 = toy_train.build_tokenizers()
    ids = tokenizer("a purple triangle on a orange background").input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens == [
        "<|startoftext|>",
        *[f"{w}</w>" for w in "a purple triangle on a orange background".split()],
        "<|endoftext|>",
    ]
    padded = tokenizer_2("a red circle on a blue background", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and tokenizer_2.convert_ids_to_tokens(padded[-1]) == "!"
    assert tokenizer.convert_ids_to_tokens(tokenizer("a zebra").input_ids)[-1] == "<|endoftext|>"


def test_warmup_cosine_rises_then_falls_to_the_floor() -> None:
    values = [toy_train.warmup_cosine(step, 100, 10, floor=0.1) for step in range(101)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))


def test_bad_arguments_exit_with_a_message(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        toy_train.main(["--seed", "1"])
    assert "--out is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        toy_train.main(["--out", str(tmp_path), "--unet-steps", "-2"])
    assert "--unet-steps must be at least 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        toy_train.main(["--out", str(tmp_path), "--minutes", "-1"])
    assert "--minutes must be positive" in capsys.readouterr().err


@pytest.mark.slow
def test_same_seed_same_weights(tmp_path: Path) -> None:
    def weights(out: Path) -> bytes:
        toy_train.main(
            ["--out", str(out), "--seed", "5", "--size", "tiny", "--images", "32"]
            + ["--vae-steps", "2", "--unet-steps", "2"]
        )
        return b"".join((out / part / "diffusion_pytorch_model.safetensors").read_bytes() for part in ("vae", "unet"))

    assert weights(tmp_path / "a") == weights(tmp_path / "b")


def test_evaluate_searches_scales_and_writes_the_table(tiny_trained: Path, tmp_path: Path) -> None:
    from engine.toy import evaluate

    out = tmp_path / "eval.md"
    argv = ["--model", str(tiny_trained), "--n", "2", "--search-n", "1", "--steps", "2", "--methods", "none,cfg"]
    assert evaluate.main([*argv, "--out", str(out), "--sheet", str(tmp_path / "sheet.png")]) == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    assert [c["method"] for c in payload["final"]] == ["none", "cfg"]
    assert len(payload["search"]) == len(evaluate.SEARCH_SETTINGS["cfg"])
    assert [c["evaluations_per_image"] for c in payload["final"]] == [2, 4]
    assert all(c["images"] == 2 for c in payload["final"])
    assert "| cfg | scale" in out.read_text()
    defaults = tmp_path / "tnr_lab.json"
    defaults.write_text('{"default_scales": {"cfg++": 0.6}, "note": "kept"}')
    assert evaluate.main([*argv, "--out", str(out), "--write-defaults", str(defaults)]) == 0
    written = json.loads(defaults.read_text())
    best_cfg = payload["final"][1]["setting"]["scale"]
    assert written == {"default_scales": {"cfg": best_cfg, "cfg++": 0.6}, "note": "kept"}  # merged, not replaced


def test_evaluate_refuses_unknown_methods_and_missing_models(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.toy import evaluate

    with pytest.raises(SystemExit):
        evaluate.main(["--methods", "cfg,magic"])
    assert "unknown method(s) magic" in capsys.readouterr().err
    assert evaluate.main(["--model", "/nonexistent/model", "--n", "1", "--methods", "none"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_fixed_pairs_cover_every_scene_before_repeating() -> None:
    from engine.toy.evaluate import prompt_seed_pairs

    pairs = prompt_seed_pairs(240, 20_000)
    assert len({scene for scene, _ in pairs[:168]}) == 168
    assert [seed for _, seed in pairs[:3]] == [20_000, 20_001, 20_002]
    assert pairs == prompt_seed_pairs(240, 20_000)


def test_polishing_the_decoder_changes_only_the_decoder(tiny_trained: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file

    model = tmp_path / "model"
    shutil.copytree(tiny_trained, model)
    before = load_file(str(model / "vae" / "diffusion_pytorch_model.safetensors"))
    argv = ["--polish-decoder", str(model), "--seed", "3", "--size", "tiny", "--images", "48"]
    assert toy_train.main([*argv, "--decoder-steps", "3"]) == 0
    after = load_file(str(model / "vae" / "diffusion_pytorch_model.safetensors"))
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(key.startswith(("decoder.", "post_quant_conv.")) for key in changed)
    assert json.loads((model / "training.json").read_text())["decoder_polish_steps"] == 3
    assert (model / "decoder_log.tsv").read_text().startswith("stage\tstep")


def test_resuming_trains_the_unet_more_and_keeps_the_autoencoder(tiny_trained: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file

    model = tmp_path / "model"
    shutil.copytree(tiny_trained, model)
    unet_file = model / "unet" / "diffusion_pytorch_model.safetensors"
    vae_file = model / "vae" / "diffusion_pytorch_model.safetensors"
    unet_before, vae_before = load_file(str(unet_file)), vae_file.read_bytes()
    argv = ["--resume", str(model), "--seed", "3", "--size", "tiny", "--images", "32", "--unet-steps", "2"]
    assert toy_train.main(argv) == 0
    unet_after = load_file(str(unet_file))
    assert any(not torch.equal(unet_before[k], unet_after[k]) for k in unet_before)
    assert vae_file.read_bytes() == vae_before
    assert json.loads((model / "training.json").read_text())["resumed_unet_steps"] == 2


def test_minutes_derive_the_step_counts_not_given_and_print_them(tmp_path: Path, capsys) -> None:
    out = tmp_path / "budget"
    argv = ["--out", str(out), "--seed", "1", "--size", "tiny", "--images", "16", "--minutes", "0.01"]
    assert toy_train.main([*argv, "--unet-steps", "3"]) == 0
    summary = json.loads((out / "training.json").read_text())
    # each budgeted stage measures its first 20 steps and takes at least 40; the given count stands
    assert summary["vae_steps"] >= 40 and summary["decoder_steps"] >= 40 and summary["unet_steps"] == 3
    err = capsys.readouterr().err
    assert f"rerun with --vae-steps {summary['vae_steps']} to reproduce" in err
    assert f"rerun with --decoder-steps {summary['decoder_steps']} to reproduce" in err

"""engine.models: loading (directory, single file, embedded, hub), refusals, and SDXL conditioning/eps."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from engine.models import Conditioning, ModelError, load_bundle

PROMPT = "a blue square on a black background"


@pytest.fixture(scope="module")
def bundle(tiny_sdxl_dir):
    return load_bundle(str(tiny_sdxl_dir))


@pytest.fixture(scope="module")
def pipe(tiny_sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir, local_files_only=True)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---- the bundle's description of the model ---------------------------------------------------------------


def test_bundle_describes_the_fixture_model(bundle, tiny_sdxl_dir):
    assert bundle.path == tiny_sdxl_dir
    assert bundle.name == tiny_sdxl_dir.name
    assert re.fullmatch(r"[0-9a-f]{12}", bundle.identity)
    assert bundle.device == torch.device("cpu")
    assert bundle.dtype == torch.float32
    assert bundle.latent_channels == 4
    assert bundle.vae_scale_factor == 8
    assert bundle.default_size == (64, 64)  # unet sample_size 8 * 8
    assert bundle.scaling_factor == pytest.approx(0.13025)
    assert bundle.force_zeros_for_empty_prompt is True
    assert bundle.scheduler_config["timestep_spacing"] == "leading"
    assert bundle.schedule.num_train_timesteps == 1000
    factors, bias = bundle.latent_rgb
    assert factors.shape == (4, 3) and factors[0, 0].item() == pytest.approx(0.3651)
    assert bias.tolist() == pytest.approx([0.1084, -0.0175, -0.0011])


def test_identity_is_stable_and_follows_the_weights(bundle, tiny_sdxl_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    again = load_bundle(str(tiny_sdxl_dir))
    assert again.identity == bundle.identity
    changed = copy_model(tiny_sdxl_dir, tmp_path / "changed")
    weights = changed / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["conv_out.bias"] = state["conv_out.bias"] + 1.0
    save_file(state, weights, metadata={"format": "pt"})
    assert load_bundle(str(changed)).identity != bundle.identity


def test_latent_rgb_json_beside_the_model_overrides_the_sdxl_factors(tiny_sdxl_dir, tmp_path):
    model = copy_model(tiny_sdxl_dir, tmp_path / "model")
    factors = [[0.1 * i, 0.2, -0.3] for i in range(4)]
    (model / "latent_rgb.json").write_text(json.dumps({"factors": factors, "bias": [0.5, 0.0, -0.5]}))
    F, b = load_bundle(str(model)).latent_rgb
    assert torch.allclose(F, torch.tensor(factors))
    assert b.tolist() == pytest.approx([0.5, 0.0, -0.5])


# ---- conditioning: exactly StableDiffusionXLPipeline.encode_prompt -----------------------------------------


def test_encode_equals_diffusers_encode_prompt(bundle, pipe):
    ours = bundle.encode(["blurry", "", PROMPT], 64, 96, zero_if_empty=[True, True, False])
    with torch.no_grad():
        pe, neg_zero, pooled, neg_pooled_zero = pipe.encode_prompt(
            PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=None
        )
        blurry, _, blurry_pooled, _ = pipe.encode_prompt(
            "blurry", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
        )
    assert ours.batch == 3
    assert ours.prompt_embeds.shape == (3, 77, 32 + 48)  # both encoders' penultimate states, concatenated
    assert torch.allclose(ours.prompt_embeds[2:], pe, atol=1e-6)
    assert torch.allclose(ours.text_embeds[2:], pooled, atol=1e-6)
    assert torch.allclose(ours.prompt_embeds[:1], blurry, atol=1e-6)
    assert torch.allclose(ours.text_embeds[:1], blurry_pooled, atol=1e-6)
    # The empty negative: zero embeddings (force_zeros_for_empty_prompt), as diffusers with negative_prompt=None.
    assert torch.equal(ours.prompt_embeds[1:2], neg_zero) and torch.equal(ours.text_embeds[1:2], neg_pooled_zero)
    assert neg_zero.abs().sum() == 0
    # time_ids: original size (h, w), crop (0, 0), target size (h, w), as diffusers' _get_add_time_ids.
    expected = pipe._get_add_time_ids((64, 96), (0, 0), (64, 96), dtype=torch.float32, text_encoder_projection_dim=48)
    assert torch.equal(ours.time_ids, expected.repeat(3, 1))
    assert ours.time_ids[0].tolist() == [64, 96, 0, 0, 64, 96]


def test_empty_text_is_encoded_when_not_flagged(bundle):
    cond = bundle.encode(["", ""], 64, 64, zero_if_empty=[False, True])
    assert cond.prompt_embeds[0].abs().sum() > 0
    assert cond.prompt_embeds[1].abs().sum() == 0


def test_conditioning_select_repeat_and_cat(bundle):
    cond = bundle.encode(["a", "b", "c"], 64, 64)
    assert isinstance(cond, Conditioning)
    picked = cond.select([2, 0])
    assert picked.texts == ["c", "a"] and torch.equal(picked.prompt_embeds[0], cond.prompt_embeds[2])
    repeated = cond.select([1]).repeat(3)
    assert repeated.batch == 3 and torch.equal(repeated.text_embeds[2], cond.text_embeds[1])
    assert Conditioning.cat([picked, repeated]).batch == 5


def test_encode_rejects_mismatched_flags(bundle):
    with pytest.raises(ValueError, match="2 texts but 1 zero_if_empty"):
        bundle.encode(["a", "b"], 64, 64, zero_if_empty=[True])


# ---- eps: the UNet on x / sqrt(sigma^2 + 1), epsilon and v-prediction --------------------------------------


def test_eps_scales_the_input_and_calls_the_unet_once(bundle, pipe):
    cond = bundle.encode(["", PROMPT], 64, 64, zero_if_empty=[True, False])
    sigma, t = 7.5, 801.0
    x = sigma * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    calls = []
    handle = bundle.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        ours = bundle.eps(x, sigma, t, cond)
    finally:
        handle.remove()
    assert calls == [2]  # both rows in one batched call
    with torch.no_grad():
        reference = pipe.unet(
            x / (sigma**2 + 1) ** 0.5,
            torch.tensor(t),
            encoder_hidden_states=cond.prompt_embeds,
            added_cond_kwargs={"text_embeds": cond.text_embeds, "time_ids": cond.time_ids},
        ).sample
    assert ours.dtype == torch.float32
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0)


def test_conditioning_work_is_reused_across_steps_bit_for_bit(bundle):
    from diffusers.models.attention_processor import Attention

    cross_attentions = [m for n, m in bundle.unet.named_modules() if isinstance(m, Attention) and n.endswith("attn2")]
    first = bundle.encode(["", PROMPT], 64, 64, zero_if_empty=[True, False])
    other = bundle.encode(["blurry", "a green triangle"], 64, 64)
    x = 4.0 * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    bundle.reuse_conditioning_work = False
    try:
        fresh = [
            bundle.eps(x, 4.0, 600.0, first),
            bundle.eps(0.5 * x, 2.0, 400.0, first),
            bundle.eps(x, 4.0, 600.0, other),
        ]
    finally:
        bundle.reuse_conditioning_work = True
    assert first.unet_cache == {}  # nothing cached while reuse is off
    cached = [
        bundle.eps(x, 4.0, 600.0, first),
        bundle.eps(0.5 * x, 2.0, 400.0, first),
        bundle.eps(x, 4.0, 600.0, other),
    ]
    for a, b in zip(fresh, cached, strict=True):
        assert torch.equal(a, b)
    # one key/value pair per cross-attention module plus the added embedding, for this model only
    (entries,) = first.unet_cache.values()
    assert len(entries) == len(cross_attentions) + 1
    assert not torch.equal(cached[0], cached[2])  # another conditioning did not reuse the first one's work


def test_an_attention_processor_set_later_is_used(tiny_sdxl_dir):
    from diffusers.models.attention_processor import AttnProcessor2_0

    class Counting(AttnProcessor2_0):
        calls = 0

        def __call__(self, *args, **kwargs):
            Counting.calls += 1
            return super().__call__(*args, **kwargs)

    bundle = load_bundle(str(tiny_sdxl_dir))
    cond = bundle.encode([PROMPT], 64, 64)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    before = bundle.eps(x, 1.0, 500.0, cond)
    bundle.unet.set_attn_processor(Counting())  # as LoRA or IP-adapter loaders do
    after = bundle.eps(x, 1.0, 500.0, cond)
    assert Counting.calls == len(bundle.unet.attn_processors)
    assert torch.allclose(before, after, atol=1e-5)


def test_v_prediction_becomes_eps_with_diffusers_denoised_estimate(tiny_sdxl_dir, tmp_path):
    """For a v model, D = x - sigma * eps must equal EulerDiscreteScheduler's pred_original_sample."""
    model = copy_model(tiny_sdxl_dir, tmp_path / "vpred")
    config_file = model / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config["prediction_type"] = "v_prediction"
    config_file.write_text(json.dumps(config))
    bundle = load_bundle(str(model))
    cond = bundle.encode([PROMPT], 64, 64)
    sigma, t = 3.0, 500.0
    x = sigma * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    eps = bundle.eps(x, sigma, t, cond)
    with torch.no_grad():
        v = bundle.unet(
            x / (sigma**2 + 1) ** 0.5,
            torch.tensor(t),
            encoder_hidden_states=cond.prompt_embeds,
            added_cond_kwargs={"text_embeds": cond.text_embeds, "time_ids": cond.time_ids},
        ).sample
    # diffusers' EulerDiscreteScheduler.step, v_prediction branch:
    pred_original = v * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
    assert eps.dtype == torch.float64  # v models: float64 eps (zero terminal SNR needs it, MATH.md 8)
    assert torch.allclose((x - sigma * eps).float(), pred_original, atol=1e-5)


def test_decode_and_preview(bundle):
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    image = bundle.decode(latent)
    assert image.shape == (1, 3, 64, 64) and image.dtype == torch.float32
    preview = bundle.preview(latent)
    assert preview.size == (8, 8) and preview.mode == "RGB"
    F, b = bundle.latent_rgb
    expected = ((torch.einsum("chw,cr->hwr", latent[0], F) + b) * 127.5 + 127.5).clamp(0, 255).round()
    assert torch.equal(torch.tensor(list(preview.getdata()), dtype=torch.float32).view(8, 8, 3), expected)


def test_fp16_variant_only_directory_loads_upcast_on_cpu(bundle, tiny_sdxl_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    model = copy_model(tiny_sdxl_dir, tmp_path / "fp16")
    for f in model.glob("*/*.safetensors"):
        state = {k: v.half() for k, v in load_file(f).items()}
        save_file(state, f.with_name(f.name.replace(".safetensors", ".fp16.safetensors")), metadata={"format": "pt"})
        f.unlink()
    half = load_bundle(str(model))
    assert half.dtype == torch.float32 and half.unet.dtype == torch.float32
    cond, reference_cond = half.encode([PROMPT], 64, 64), bundle.encode([PROMPT], 64, 64)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    eps, reference = half.eps(x, 1.0, 500.0, cond), bundle.eps(x, 1.0, 500.0, reference_cond)
    # the same model up to the fp16 rounding of its weights
    assert 0 < (eps - reference).abs().max() < 0.05 * reference.abs().max()


# ---- references: embedded, errors, refusals ----------------------------------------------------------------


def test_embedded_resolves_through_the_environment(tiny_sdxl_dir, monkeypatch):
    monkeypatch.setenv("TNR_LAB_EMBEDDED_MODEL", str(tiny_sdxl_dir))
    bundle = load_bundle("embedded")
    assert bundle.ref == "embedded" and bundle.path == tiny_sdxl_dir


def test_missing_embedded_model_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TNR_LAB_EMBEDDED_MODEL", str(tmp_path / "shapes-xl"))
    with pytest.raises(ModelError, match=r"embedded model is not there yet .*shapes-xl.*python -m engine\.toy\.train"):
        load_bundle("embedded")


def test_missing_path_is_named(tmp_path):
    with pytest.raises(ModelError, match=re.escape(str(tmp_path / "nope")) + ": no such file or directory"):
        load_bundle(str(tmp_path / "nope"))


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt", ".pth", ".pkl"])
def test_pickled_checkpoints_are_refused(tmp_path, suffix):
    f = tmp_path / f"model{suffix}"
    f.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelError, match=r"refusing to load a pickled checkpoint .*arbitrary code"):
        load_bundle(str(f))


def test_directory_with_pickled_component_weights_is_refused(tiny_sdxl_dir, tmp_path):
    model = copy_model(tiny_sdxl_dir, tmp_path / "pickled")
    weights = model / "text_encoder" / "model.safetensors"
    weights.rename(model / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"pytorch_model\.bin: refusing .*arbitrary code"):
        load_bundle(str(model))


def test_truncated_weights_are_named(tiny_sdxl_dir, tmp_path):
    model = copy_model(tiny_sdxl_dir, tmp_path / "truncated")
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:10_000])
    with pytest.raises(ModelError, match=re.escape(str(weights)) + ": not a readable safetensors file"):
        load_bundle(str(model))


def test_missing_component_is_named(tiny_sdxl_dir, tmp_path):
    model = copy_model(tiny_sdxl_dir, tmp_path / "partial")
    shutil.rmtree(model / "text_encoder_2")
    with pytest.raises(ModelError, match=r"partial: missing text_encoder_2; an SDXL diffusers directory has"):
        load_bundle(str(model))


def test_broken_config_is_named(tiny_sdxl_dir, tmp_path):
    model = copy_model(tiny_sdxl_dir, tmp_path / "badjson")
    (model / "scheduler" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"scheduler_config\.json: not valid JSON"):
        load_bundle(str(model))


def test_hub_id_offline_without_cache_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelError, match=r"someone/some-model: no such local .* from the hub \(HF_HUB_OFFLINE"):
        load_bundle("someone/some-model")


def test_an_unreachable_hub_fails_at_once_with_a_clear_error(monkeypatch, tmp_path):
    import time

    from engine.models import loading

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=2.0: False)
    started = time.perf_counter()
    with pytest.raises(ModelError, match=r"models/sdxl: .*\(the hub cannot be reached from here"):
        load_bundle("models/sdxl")  # a mistyped relative path looks like a hub id
    assert time.perf_counter() - started < 5  # no network retries


def test_hub_reachable_answers_false_for_a_closed_port(monkeypatch):
    import socket

    from engine.models.loading import hub_reachable

    with socket.socket() as server:  # a port that is bound but not listening refuses connections
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        assert hub_reachable(timeout=1.0) is False
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
        assert hub_reachable(timeout=1.0) is True  # behind a proxy: leave it to huggingface_hub
        monkeypatch.delenv("HTTPS_PROXY")
        server.listen()
        assert hub_reachable(timeout=1.0) is True


def test_bad_device_and_dtype_are_refused(tiny_sdxl_dir):
    with pytest.raises(ModelError, match="unknown dtype 'float8'"):
        load_bundle(str(tiny_sdxl_dir), dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="torch sees no CUDA device"):
            load_bundle(str(tiny_sdxl_dir), device="cuda")


def test_bfloat16_asked_for_on_cpu_keeps_the_decoder_in_float32(tiny_sdxl_dir):
    bundle = load_bundle(str(tiny_sdxl_dir), dtype="bfloat16")
    assert bundle.dtype == torch.bfloat16
    assert bundle.unet.dtype == torch.bfloat16 and bundle.text_encoder_2.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bundle.decoder.parameters())
    cond = bundle.encode([PROMPT], 64, 64)
    eps = bundle.eps(torch.randn(1, 4, 8, 8), 1.0, 300.0, cond)
    assert eps.dtype == torch.float32 and torch.isfinite(eps).all()


# ---- single-file checkpoints ---------------------------------------------------------------------------------


def write_original_sdxl_checkpoint(model_dir: Path, out: Path) -> None:
    """Write a diffusers SDXL directory as one safetensors file in the original (SGM/LDM) layout
    (engine.models.tiny.write_single_file: the inverse of diffusers' single-file conversion)."""
    from engine.models.tiny import write_single_file

    write_single_file(model_dir, out)


@pytest.fixture(scope="module")
def single_file(tiny_sdxl_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    checkpoint = folder / "tiny-sdxl.safetensors"
    write_original_sdxl_checkpoint(tiny_sdxl_dir, checkpoint)
    # The config directory: the fixture's JSON configs and tokenizers, without any weights.
    config_dir = folder / "configs"
    shutil.copytree(tiny_sdxl_dir, config_dir, ignore=shutil.ignore_patterns("*.safetensors"))
    return checkpoint, config_dir


def test_single_file_checkpoint_loads_with_a_config_dir(single_file, bundle):
    checkpoint, config_dir = single_file
    loaded = load_bundle(str(checkpoint), config=config_dir)
    assert loaded.name == "tiny-sdxl" and loaded.path == checkpoint
    # Same weights as the directory it came from: every part gives the same numbers.
    cond = loaded.encode(["", PROMPT], 64, 64, zero_if_empty=[True, False])
    reference_cond = bundle.encode(["", PROMPT], 64, 64, zero_if_empty=[True, False])
    assert torch.allclose(cond.prompt_embeds, reference_cond.prompt_embeds, atol=1e-5)
    assert torch.allclose(cond.text_embeds, reference_cond.text_embeds, atol=1e-5)
    x = 5.0 * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(loaded.eps(x, 5.0, 700.0, cond), bundle.eps(x, 5.0, 700.0, reference_cond), atol=1e-5)
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(loaded.decode(latent), bundle.decode(latent), atol=1e-5)


def test_single_file_finds_a_sibling_config_dir(single_file, tmp_path):
    checkpoint, config_dir = single_file
    local = tmp_path / "tiny-sdxl.safetensors"
    local.symlink_to(checkpoint)
    shutil.copytree(config_dir, tmp_path / "tiny-sdxl")  # <stem>/ beside the file
    assert load_bundle(str(local)).name == "tiny-sdxl"


def test_single_file_without_config_says_what_is_needed(single_file, tmp_path):
    checkpoint, _ = single_file
    lonely = tmp_path / "lonely.safetensors"
    shutil.copy(checkpoint, lonely)
    with pytest.raises(ModelError, match=r"lonely\.safetensors: a single-file checkpoint needs a config directory"):
        load_bundle(str(lonely))


def test_dropped_text_names_what_the_encoders_never_see(bundle):
    long_prompt = " ".join(["a red circle on a blue background"] * 15 + ["and a black square"])
    short, long = bundle.dropped_text([PROMPT, long_prompt])
    assert short == ""
    assert long.endswith("and a black square") and " ".join(long_prompt.split()).endswith(long)
    # what encode feeds the model ignores that part: more words there change nothing but the dropped text
    longer = long_prompt + " on a white background"
    assert bundle.dropped_text([longer])[0] == long + " on a white background"
    cond = bundle.encode([long_prompt, longer, PROMPT, PROMPT + " red"], 64, 64)
    assert torch.equal(cond.prompt_embeds[0], cond.prompt_embeds[1])
    assert torch.equal(cond.text_embeds[0], cond.text_embeds[1])
    assert not torch.equal(cond.prompt_embeds[2], cond.prompt_embeds[3])  # within the context words count


def test_default_scales_come_from_tnr_lab_json_beside_the_model(tiny_sdxl_dir, tmp_path):
    assert load_bundle(str(tiny_sdxl_dir)).default_scales == {}
    model = copy_model(tiny_sdxl_dir, tmp_path / "with-defaults")
    (model / "tnr_lab.json").write_text('{"default_scales": {"cfg": 2.5, "cfg++": 1}}')
    assert load_bundle(str(model)).default_scales == {"cfg": 2.5, "cfg++": 1.0}
    for text, message in [
        ('{"default_scales": {"warp": 2}}', "unknown guidance method 'warp'"),
        ('{"default_scales": {"cfg": "high"}}', "the default scale of cfg must be a finite number, got 'high'"),
        ('{"default_scales": [3]}', "expected {'default_scales'"),
        ("{nope", "not valid JSON"),
    ]:
        (model / "tnr_lab.json").write_text(text)
        with pytest.raises(ModelError, match=re.escape(message)):
            load_bundle(str(model))

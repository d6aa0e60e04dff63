"""Model families (engine.models.families): SD 1.5 and SD 2.x load from diffusers directories, condition as
StableDiffusionPipeline does, and follow their family's empty-negative rule; SDXL keeps its own."""

from __future__ import annotations

import json

import pytest
import torch

from engine.models import ModelError, load_bundle
from engine.models.families import SD1, SD2, SDXL, FamilyError, family_of_directory, family_of_keys

PROMPT = "a blue square on a black background"


@pytest.fixture(scope="module")
def sd15(tiny_sd15_dir):
    return load_bundle(str(tiny_sd15_dir))


@pytest.fixture(scope="module")
def sd2v(tiny_sd2v_dir):
    return load_bundle(str(tiny_sd2v_dir))


def sd_pipe(path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(path, local_files_only=True, safety_checker=None)


def test_each_fixture_is_its_family(sd15, sd2v, tiny_sdxl_dir, tiny_sd15_dir):
    xl = load_bundle(str(tiny_sdxl_dir))
    assert (sd15.family, sd2v.family, xl.family) == (SD1, SD2, SDXL)
    assert sd15.describe() == "SD 1.5, eps-prediction"
    assert sd2v.describe() == "SD 2.x, v-prediction"
    assert sd15.text_encoder_2 is None and sd15.tokenizer_2 is None
    assert sd15.scaling_factor == pytest.approx(0.18215) and xl.scaling_factor == pytest.approx(0.13025)
    # the published SD configs name no timestep_spacing: linspace, as diffusers' Euler defaults to
    assert "timestep_spacing" not in json.loads((tiny_sd15_dir / "scheduler" / "scheduler_config.json").read_text())
    assert sd15.schedule.timestep_spacing == "linspace"
    assert sd2v.unet.config.upcast_attention and sd2v.unet.config.use_linear_projection
    assert not sd15.unet.config.use_linear_projection
    # previews: SD 1.5's public factors (ComfyUI's latent_formats.SD15) for both SD families
    factors, bias = sd2v.latent_rgb
    assert factors[3].tolist() == pytest.approx([-0.2120, -0.2616, -0.7177]) and bias.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("which", ["sd15", "sd2v"])
def test_encode_equals_stable_diffusion_pipeline_encode_prompt(which, request):
    bundle = request.getfixturevalue(which)
    pipe = sd_pipe(bundle.path)
    embeds, negative = pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt=None)
    cond = bundle.encode(["", PROMPT], 64, 64, zero_if_empty=[True, False])
    assert cond.text_embeds is None and cond.time_ids is None
    assert torch.allclose(cond.prompt_embeds[1], embeds[0], atol=1e-6)
    # an unset negative is the encoded "" in StableDiffusionPipeline: the family's rule, not zeros
    assert bundle.force_zeros_for_empty_prompt is False
    assert torch.allclose(cond.prompt_embeds[0], negative[0], atol=1e-6)
    assert cond.prompt_embeds[0].abs().max() > 0.1


def test_sd2_pads_with_its_tokenizers_own_pad_token(sd2v, sd15):
    assert sd2v.tokenizer.pad_token == "!" and sd15.tokenizer.pad_token == "<|endoftext|>"
    ids = sd2v.tokenizer([PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    assert ids[-1].item() == sd2v.tokenizer.convert_tokens_to_ids("!")


def test_the_empty_negative_rule_is_a_property_of_the_family(sd15, tiny_sdxl_dir):
    xl = load_bundle(str(tiny_sdxl_dir))
    sd_cond = sd15.encode([""], 64, 64, zero_if_empty=[True])
    xl_cond = xl.encode([""], 64, 64, zero_if_empty=[True])
    assert sd_cond.prompt_embeds.abs().max() > 0.1  # SD 1.5/2.x: "" encoded
    assert xl_cond.prompt_embeds.abs().max() == 0 and xl_cond.text_embeds.abs().max() == 0  # SDXL: zeros


def test_an_sdxl_model_index_can_turn_zeroing_off_but_an_sd_one_cannot_turn_it_on(
    tiny_sdxl_dir, tiny_sd15_dir, tmp_path
):
    import shutil

    for src, flag in ((tiny_sdxl_dir, False), (tiny_sd15_dir, True)):
        model = shutil.copytree(src, tmp_path / src.name)
        index = json.loads((model / "model_index.json").read_text())
        index["force_zeros_for_empty_prompt"] = flag
        (model / "model_index.json").write_text(json.dumps(index))
        # SDXL follows its index; StableDiffusionPipeline has no such option and always encodes ""
        assert load_bundle(str(model)).force_zeros_for_empty_prompt is False


def test_family_from_configs_and_keys():
    assert family_of_directory({"addition_embed_type": "text_time"}, {"hidden_act": "quick_gelu"}) is SDXL
    assert family_of_directory({"addition_embed_type": None}, {"hidden_act": "gelu"}) is SD2
    assert family_of_directory({}, {"hidden_act": "quick_gelu"}) is SD1
    unet = ["model.diffusion_model.input_blocks.0.0.weight"]
    assert family_of_keys(unet + ["cond_stage_model.transformer.text_model.final_layer_norm.weight"]) is SD1
    assert family_of_keys(unet + ["cond_stage_model.model.ln_final.weight"]) is SD2
    assert family_of_keys(unet + ["conditioner.embedders.1.model.ln_final.weight"]) is SDXL
    with pytest.raises(FamilyError, match=r"found double_blocks \(2 keys\), img_in \(1 key\)"):
        family_of_keys(["double_blocks.0.a", "double_blocks.0.b", "img_in.weight"])
    with pytest.raises(FamilyError, match="found model.diffusion_model"):
        family_of_keys(unet)
    with pytest.raises(FamilyError, match="9 input channels"):
        family_of_keys(
            unet + ["cond_stage_model.model.ln_final.weight"],
            {"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)},
        )


def test_a_wrong_cross_attention_width_is_named(tiny_sd15_dir, tmp_path):
    import shutil

    model = shutil.copytree(tiny_sd15_dir, tmp_path / "bad")
    config = json.loads((model / "text_encoder" / "config.json").read_text())
    config["hidden_act"] = "gelu"  # now it looks like SD 2.x, but widths still agree: loads
    (model / "text_encoder" / "config.json").write_text(json.dumps(config))
    assert load_bundle(str(model)).family is SD2
    shutil.rmtree(model / "tokenizer")
    with pytest.raises(ModelError, match="missing tokenizer; an SD 2.x diffusers directory has"):
        load_bundle(str(model))

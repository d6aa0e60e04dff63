"""PNG metadata: the A1111 `parameters` text, checked by an independent parser, and the round trip back."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tnr_tui.services.history.png import (
    PngMetadataError,
    a1111_parameters,
    parse_a1111,
    png_info,
    request_from_png,
    write_png,
)

REQUEST = {
    "prompt": "a red circle, on grey",
    "negative_prompt": "blurry",
    "steps": 15,
    "solver": "heun",
    "guidance": "tnr",
    "scale": 1.5,
    "seed": 123456789012,
    "width": 64,
    "height": 96,
    "tnr_power": 0.25,
    "schedule": "karras",
    "cfg_rescale": 0.0,
}


def independent_parse(text: str) -> tuple[str, str | None, dict[str, str]]:
    """A deliberately separate reading of the A1111 format: last line = `k: v` pairs (quoted values may
    hold commas), a line starting `Negative prompt: ` starts the negative prompt."""
    *head, last = text.split("\n")
    assert last.startswith("Steps: ")
    pairs: dict[str, str] = {}
    for key, quoted, plain in re.findall(r'([A-Za-z][A-Za-z0-9 ]*): (?:"((?:[^"\\]|\\.)*)"|([^,]*))(?:, |$)', last):
        pairs[key] = json.loads(f'"{quoted}"') if quoted else plain
    negative = None
    prompt_lines = []
    for line in head:
        if line.startswith("Negative prompt: "):
            negative = line[len("Negative prompt: ") :]
        elif negative is None:
            prompt_lines.append(line)
    return "\n".join(prompt_lines), negative, pairs


def test_parameters_text_has_the_exact_a1111_layout():
    text = a1111_parameters(REQUEST, model_name="shapes-xl", model_hash="0123abcd")
    lines = text.split("\n")
    assert lines[0] == "a red circle, on grey"
    assert lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith(
        "Steps: 15, Sampler: Heun, Schedule type: Karras, CFG scale: 1.5, Seed: 123456789012, Size: 64x96, "
        "Model: shapes-xl, Model hash: 0123abcd, Guidance: tnr, TNR p: 0.25, Version: tnr-lab "
    )
    prompt, negative, pairs = independent_parse(text)
    assert prompt == REQUEST["prompt"] and negative == "blurry"
    assert pairs["Steps"] == "15" and pairs["Seed"] == "123456789012" and pairs["Size"] == "64x96"
    assert pairs["Guidance"] == "tnr" and pairs["CFG scale"] == "1.5" and pairs["Sampler"] == "Heun"


def test_no_negative_line_without_negative_prompt_and_default_scale_written():
    text = a1111_parameters({**REQUEST, "negative_prompt": "", "scale": None, "guidance": "cfg"})
    assert "Negative prompt" not in text
    prompt, negative, pairs = independent_parse(text)
    assert negative is None and pairs["CFG scale"] == "5" and "TNR p" not in pairs


def test_values_with_commas_are_quoted_and_parsed_back():
    text = a1111_parameters(REQUEST, model_name="my model, v2: final")
    assert 'Model: "my model, v2: final"' in text
    assert independent_parse(text)[2]["Model"] == "my model, v2: final"
    assert parse_a1111(text)["fields"]["Model"] == "my model, v2: final"


def test_multiline_prompt_round_trips_through_our_parser():
    text = a1111_parameters({**REQUEST, "prompt": "line one\nline two", "negative_prompt": "neg a\nneg b"})
    parsed = parse_a1111(text)
    assert parsed["prompt"] == "line one\nline two" and parsed["negative_prompt"] == "neg a\nneg b"


def test_our_png_gives_back_the_full_request(tmp_path):
    path = tmp_path / "out.png"
    write_png(Image.new("RGB", (8, 8), "red"), path, png_info(REQUEST, model_name="m", model_hash="h", run_id="X"))
    request, source, notes = request_from_png(path)
    assert (request, source, notes) == (REQUEST, "tnr-lab", [])
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary file left


def test_a1111_png_maps_sampler_names_and_fields(tmp_path):
    info = PngInfo()
    info.add_text(
        "parameters",
        "masterpiece, a cat\nNegative prompt: lowres\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, "
        'CFG scale: 7, Seed: 42, Size: 832x1216, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Lora hashes: "a: 1, b: 2"',
    )
    path = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    request, source, notes = request_from_png(path)
    assert source == "a1111"
    assert request == {
        "prompt": "masterpiece, a cat",
        "negative_prompt": "lowres",
        "steps": 30,
        "seed": 42,
        "solver": "dpmpp_2m",
        "guidance": "cfg",
        "scale": 7.0,
        "width": 832,
        "height": 1216,
        "schedule": "karras",
    }
    assert not any("DPM++ 2M" in n for n in notes)  # a sampler the lab has: no approximation to report
    from engine.request import GenerationRequest

    assert GenerationRequest.from_dict(request).solver == "dpmpp_2m"


def read_sampler(tmp_path, sampler: str, extra: str = ""):
    info = PngInfo()
    info.add_text("parameters", f"p\nSteps: 5, Sampler: {sampler}, CFG scale: 4, Seed: 1, Size: 64x64{extra}")
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return request_from_png(path)


@pytest.mark.parametrize("sampler,solver", [("Euler", "euler"), ("Heun", "heun"), ("DPM++ 2M", "dpmpp_2m")])
def test_a1111_sampler_mapping(tmp_path, sampler, solver):
    assert read_sampler(tmp_path, sampler)[0]["solver"] == solver


def test_every_registered_solver_round_trips_through_its_a1111_name(tmp_path):
    from engine.units import SOLVERS
    from tnr_tui.services.history.png import a1111_sampler_name, solver_from_a1111

    for unit in SOLVERS:
        assert solver_from_a1111(a1111_sampler_name(unit.name)) == (unit.name, None, []), unit.name


def test_an_old_style_sampler_name_carries_its_schedule(tmp_path):
    request, _, notes = read_sampler(tmp_path, "DPM++ 2M Karras")
    assert (request["solver"], request["schedule"], notes) == ("dpmpp_2m", "karras", [])


def test_an_unknown_sampler_becomes_a_registered_one_with_a_note(tmp_path):
    from engine.units import SOLVERS

    request, _, notes = read_sampler(tmp_path, "Restart Sampler 9000")
    assert request["solver"] in SOLVERS
    assert any("'Restart Sampler 9000' has no counterpart here; using the nearest" in n for n in notes)


def test_unit_parameters_round_trip_through_a1111_text(tmp_path):
    from engine.request import GenerationRequest
    from tnr_tui.services.history.png import a1111_parameters, request_from_a1111

    request = GenerationRequest(
        prompt="a cat", guidance="apg", scale=3.0, guidance_params={"eta": 0.0}, solver="dpmpp_2m", seed=3, steps=7
    ).to_dict()
    text = a1111_parameters(request)
    assert "Sampler: DPM++ 2M" in text
    back, notes = request_from_a1111(text)
    assert GenerationRequest.from_dict(back).guidance_params == {"eta": 0.0}
    assert back["guidance"] == "apg" and back["solver"] == "dpmpp_2m" and notes == []


def test_png_without_parameters_and_non_png_are_refused(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(PngMetadataError, match="no generation parameters"):
        request_from_png(plain)
    jpeg = tmp_path / "x.jpg"
    Image.new("RGB", (8, 8)).save(jpeg)
    with pytest.raises(PngMetadataError, match="not a PNG"):
        request_from_png(jpeg)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"nope")
    with pytest.raises(PngMetadataError, match="not a readable image"):
        request_from_png(junk)
    with pytest.raises(PngMetadataError, match="no such file"):
        request_from_png(tmp_path / "missing.png")


def a1111_png(tmp_path, parameters, name="x.png", tnr_chunk=None):
    info = PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    if tnr_chunk is not None:
        info.add_text("tnr-lab", tnr_chunk)
    path = tmp_path / name
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_a1111_integers_are_read_exactly_not_through_a_float(tmp_path):
    big = 10**26
    path = a1111_png(tmp_path, f"p\nSteps: 99999999999999999999999, Sampler: Euler, CFG scale: 4, Seed: {big}")
    request, _, _ = request_from_png(path)
    assert request["steps"] == 99999999999999999999999 and request["seed"] == big  # the request check refuses them
    path = a1111_png(tmp_path, "p\nSteps: 20.0, Sampler: Euler, CFG scale: 4, Seed: 123456789012345678")
    assert request_from_png(path)[0]["seed"] == 123456789012345678 and request_from_png(path)[0]["steps"] == 20


@pytest.mark.parametrize(
    "fields,message",
    [
        ("Steps: many, Seed: 1", "Steps 'many' in the parameters text is not a whole number"),
        ("Steps: 12.5, Seed: 1", "Steps '12.5' in the parameters text is not a whole number"),
        ("Steps: 1e400, Seed: 1", "Steps '1e400' in the parameters text is not a whole number"),
        ("Steps: 5, Seed: 1, CFG scale: inf", "CFG scale 'inf' in the parameters text is not a finite number"),
    ],
)
def test_a1111_numbers_that_are_not_numbers_are_a_message(tmp_path, fields, message):
    with pytest.raises(PngMetadataError, match=message):
        request_from_png(a1111_png(tmp_path, f"p\n{fields}"))


def test_a_damaged_tnr_lab_chunk_is_named_as_such(tmp_path):
    path = a1111_png(tmp_path, None, tnr_chunk="{not json")
    with pytest.raises(PngMetadataError, match="its 'tnr-lab' chunk is not valid JSON"):
        request_from_png(path)
    path = a1111_png(tmp_path, None, tnr_chunk='{"run_id": "X"}', name="y.png")
    with pytest.raises(PngMetadataError, match="its 'tnr-lab' chunk holds no request object"):
        request_from_png(path)
    # With A1111 text beside it, that text is used and the notes say why.
    path = a1111_png(tmp_path, "p\nSteps: 5, Sampler: Euler, CFG scale: 4, Seed: 1", "z.png", tnr_chunk="{not json")
    request, source, notes = request_from_png(path)
    assert (source, request["steps"]) == ("a1111", 5)
    assert "'tnr-lab' chunk is not valid JSON" in notes[0]


def test_crlf_line_ends_leave_no_carriage_return_in_the_request(tmp_path):
    text = "a cat\r\non two lines\r\nNegative prompt: dog\r\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1\r\n"
    request, source, notes = request_from_png(a1111_png(tmp_path, text))
    assert (request["prompt"], request["negative_prompt"]) == ("a cat\non two lines", "dog")
    assert (request["steps"], request["seed"], request["scale"]) == (20, 1, 7.0)
    assert not any("\r" in str(value) for value in request.values())
    # A lone CR is no line end: it stays in the text (shown as \r), and never breaks the fields line.
    lone = request_from_png(a1111_png(tmp_path, "a\rb\nSteps: 4, Sampler: E\ru, Seed: 2", name="cr.png"))
    assert (lone[0]["prompt"], lone[0]["steps"], lone[0]["seed"]) == ("a\rb", 4, 2)


@pytest.mark.parametrize(
    "fields",
    [
        "Steps: 20, Sampler: Euler, CFG scale: 7,5, Seed: 3, Size: 64x64",
        "Steps: 20, Sampler: Euler, Seed: 3, Size: 64x64, CFG scale: 7,5",  # last field: no separator after
    ],
)
def test_a_decimal_comma_is_read_as_a_decimal_with_a_note(tmp_path, fields):
    request, _, notes = request_from_png(a1111_png(tmp_path, f"a cat\n{fields}"))
    assert (request["scale"], request["seed"], request["width"]) == (7.5, 3, 64)  # not 7, and nothing lost
    assert "CFG scale '7,5' read as 7.5 (a decimal comma)" in notes


def test_a_comma_in_a_whole_number_field_is_refused_not_guessed(tmp_path):
    with pytest.raises(PngMetadataError, match=r"Seed '1,234' .* not a whole number \(thousands or decimals\?"):
        request_from_png(a1111_png(tmp_path, "p\nSteps: 20, Seed: 1,234, CFG scale: 7"))


def test_a_png_claiming_a_huge_size_is_refused_before_decoding(tmp_path):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # 900 Mpx, in a file of 80 bytes
    path = tmp_path / "huge.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"tEXt", b"parameters\x00p\nSteps: 4, Seed: 1")
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(PngMetadataError, match="refused, the image is too large"):
        request_from_png(path)


def test_a_tnr_lab_chunk_nested_too_deeply_is_named_as_such(tmp_path):
    path = a1111_png(tmp_path, None, tnr_chunk="[" * 100_000 + "]" * 100_000)
    with pytest.raises(PngMetadataError, match="chunk is JSON nested too deeply"):
        request_from_png(path)

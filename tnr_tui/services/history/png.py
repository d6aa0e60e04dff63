"""PNG metadata: AUTOMATIC1111's `parameters` text (read by other tools and image sites) and our own
`tnr-lab` chunk holding the full request JSON. Reading prefers ours and falls back to A1111's.

The A1111 text is: the prompt (one or more lines), a `Negative prompt: ...` line when there is one, then
one line of `Key: value` pairs separated by ", " starting with `Steps:`. Values holding a comma or a quote
are written as JSON strings, as A1111 does.

Reading other tools' text: a CRLF line end is a line end (no `\\r` of it stays in a prompt); a lone CR is
no line end of A1111's, so it stays a character (every printer shows it as `\\r`). A comma between
two digits, right before a field separator or the end (`CFG scale: 7,5, Seed: 1`), is a decimal comma, as
a European locale or a hand edit writes it: A1111 itself separates fields with ", " and never writes one, so
`7,5` cannot be two fields; it is read as 7.5 with a note (A1111's own reader would silently take 7).
A whole-number field written that way (`Seed: 1,234`) is refused rather than guessed.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

TNR_CHUNK = "tnr-lab"
A1111_CHUNK = "parameters"

# A1111's names come from the units (engine.units: each solver's `a1111` name and `aliases`, each schedule's
# `a1111` "Schedule type"). Older A1111 files put the schedule into the sampler's name ("DPM++ 2M Karras").
A1111_SCHEDULE_SUFFIXES = ("karras", "exponential", "sgm uniform", "uniform", "simple", "beta", "kl optimal")


def a1111_sampler_name(solver: str) -> str:
    from engine.units import SOLVERS  # torch-free

    unit = SOLVERS.get(solver) if solver in SOLVERS else None
    return (unit.a1111 or unit.name) if unit is not None else solver


def solver_from_a1111(sampler: str) -> tuple[str, str | None, list[str]]:
    """(solver, schedule or None, notes) for an A1111 sampler name; an unknown one becomes the nearest we have."""
    import difflib

    from engine.units import SCHEDULES, SOLVERS

    name, schedule = sampler.strip(), None
    for suffix in A1111_SCHEDULE_SUFFIXES:
        if name.lower().endswith(" " + suffix) and SOLVERS.canonical(name[: -len(suffix) - 1]):
            name, schedule = name[: -len(suffix) - 1], SCHEDULES.canonical(suffix)
            break
    solver = SOLVERS.canonical(name)
    if solver is not None:
        return solver, schedule, []
    known = {alias: unit.name for unit in SOLVERS for alias in (unit.name, *unit.aliases)}
    close = difflib.get_close_matches(name.lower(), [a.lower() for a in known], n=1, cutoff=0.5)
    nearest = next((n for a, n in known.items() if close and a.lower() == close[0]), "euler")
    return nearest, schedule, [f"sampler {sampler!r} has no counterpart here; using the nearest, {nearest}"]


class PngMetadataError(ValueError):
    """A PNG holds no usable generation parameters; the message is for the user."""


def _quote(value: str) -> str:
    return json.dumps(value) if ("," in value or '"' in value or ":" in value or "\n" in value) else value


def _format_number(value: float) -> str:
    return f"{value:g}" if float(value) != int(value) else str(int(value))


LORA_TAG = re.compile(r"<lora:([^:<>]+)((?::[^:<>]*)*)>")


def a1111_parameters(
    request: dict[str, Any], *, model_name: str = "", model_hash: str = "", lora_hashes: dict[str, str] | None = None
) -> str:
    """The `parameters` text for a (resolved) request dict.

    LoRAs are written as A1111 writes them: a `<lora:NAME:WEIGHT>` tag per LoRA in the prompt (NAME the file
    name without .safetensors; appended, since our prompt holds none) and `Lora hashes: "NAME: HASH, ..."`
    (A1111's 12-digit hash of the file's tensor data) when the hashes are known."""
    scale = request.get("scale")
    if scale is None:
        from engine.units import GUIDANCE  # torch-free

        method = request.get("guidance", "cfg")
        scale = GUIDANCE.get(method).default_scale if method in GUIDANCE else 1.0
    from engine.loras import lora_name

    loras = [(lora_name(lora["path"]), float(lora.get("weight", 1.0))) for lora in request.get("loras") or []]
    tags = " ".join(f"<lora:{name}:{_format_number(weight)}>" for name, weight in loras)
    prompt = request.get("prompt", "")
    lines = [f"{prompt} {tags}" if tags and prompt else prompt or tags]
    if request.get("negative_prompt"):
        lines.append(f"Negative prompt: {request['negative_prompt']}")
    fields: list[tuple[str, str]] = [
        ("Steps", str(request.get("steps", 20))),
        ("Sampler", a1111_sampler_name(request.get("solver", "euler"))),
    ]
    from engine.units import SCHEDULES

    schedule = request.get("schedule", "default")
    schedule_type = SCHEDULES.get(schedule).a1111 if schedule in SCHEDULES and schedule != "default" else None
    if schedule_type:
        fields.append(("Schedule type", schedule_type))
    fields += [
        ("CFG scale", _format_number(float(scale))),
        ("Seed", str(request.get("seed", 0))),
    ]
    if request.get("width") and request.get("height"):
        fields.append(("Size", f"{request['width']}x{request['height']}"))
    if model_name:
        fields.append(("Model", model_name))
    if model_hash:
        fields.append(("Model hash", model_hash))
    if loras and lora_hashes:
        known = [(name, lora_hashes[name]) for name, _ in loras if name in lora_hashes]
        if known:
            fields.append(("Lora hashes", ", ".join(f"{name}: {h}" for name, h in known)))
    fields.append(("Guidance", request.get("guidance", "cfg")))
    if request.get("guidance") in ("tnr", "tnr-cfg") or request.get("tnr"):
        fields.append(("TNR p", _format_number(float(request.get("tnr_power", 0.25)))))
    if request.get("cfg_rescale"):
        fields.append(("CFG rescale", _format_number(float(request["cfg_rescale"]))))
    # The units' own parameters, as JSON (A1111 has no field for them; its readers keep unknown fields).
    if request.get("guidance_params"):
        fields.append(("Guidance params", json.dumps(request["guidance_params"], sort_keys=True)))
    if request.get("solver_params"):
        fields.append(("Sampler params", json.dumps(request["solver_params"], sort_keys=True)))
    if schedule != "default" and not schedule_type:
        fields.append(("Sigma schedule", schedule))
    from tnr_tui import __version__

    fields.append(("Version", f"tnr-lab {__version__}"))
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields))
    return "\n".join(lines)


def png_info(
    request: dict[str, Any],
    *,
    model_name: str = "",
    model_hash: str = "",
    run_id: str = "",
    lora_hashes: dict[str, str] | None = None,
) -> Any:
    """A PIL PngInfo with both chunks."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    text = a1111_parameters(request, model_name=model_name, model_hash=model_hash, lora_hashes=lora_hashes)
    info.add_text(A1111_CHUNK, text)
    payload = {"request": request, "run_id": run_id, "model_name": model_name, "model_identity": model_hash}
    info.add_text(TNR_CHUNK, json.dumps(payload, sort_keys=True))
    return info


def write_png(image: Any, path: Path, pnginfo: Any = None) -> None:
    """Write atomically: a temporary name in the same directory, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format="PNG", pnginfo=pnginfo)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_PAIR = re.compile(r'\s*([\w .+/()-]+?):\s*("(?:\\.|[^\\"])*"|\d+,\d+(?=\s*,\s|\s*$)|[^,]*)(?:,|$)')
_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+")


def parse_a1111(text: str) -> dict[str, Any]:
    """Parse a `parameters` text: {"prompt", "negative_prompt", "fields": {key: value}}."""
    lines = text.replace("\r\n", "\n").strip("\n").split("\n")
    fields: dict[str, str] = {}
    if lines and re.match(r"\s*Steps:\s*", lines[-1]):
        for match in _PAIR.finditer(lines[-1]):
            key, value = match.group(1).strip(), match.group(2).strip()
            if value.startswith('"'):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    value = value.strip('"')
            fields[key] = value
        lines = lines[:-1]
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].lstrip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines), "fields": fields}


def loras_from_prompt(prompt: str) -> tuple[str, list[dict[str, Any]], list[str]]:
    """A1111's `<lora:NAME:WEIGHT>` tags out of a prompt: (the prompt without them, [{"path", "weight"}], notes).

    A1111 removes the tags before the text encoder sees the prompt, and so do we. NAME becomes the file found
    in $TNR_LAB_LORA_DIRS (NAME or NAME.safetensors), else NAME itself with a note. A second number (A1111's
    separate UNet weight, `<lora:NAME:TE:UNET>`) has no counterpart here: the first is used, with a note.
    """
    from engine.loras import LORA_DIRS_ENV, resolve_lora_path

    loras: list[dict[str, Any]] = []
    notes: list[str] = []
    for match in LORA_TAG.finditer(prompt):
        name, rest = match.group(1).strip(), [p.strip() for p in match.group(2).split(":")[1:]]
        try:
            weight = float(rest[0]) if rest and rest[0] else 1.0
        except ValueError:
            notes.append(f"LoRA tag {match.group(0)!r}: weight {rest[0]!r} is not a number; using 1")
            weight = 1.0
        if len(rest) > 1:
            notes.append(f"LoRA {name}: A1111's separate weights {':'.join(rest)} are one weight here ({weight:g})")
        path = resolve_lora_path(name)
        if not path.is_file():
            notes.append(f"LoRA {name!r} is not in ${LORA_DIRS_ENV}: give its file with --lora PATH:{weight:g}")
        loras.append({"path": str(path) if path.is_file() else name, "weight": weight})
    if not loras:
        return prompt, [], []
    cleaned = re.sub(r"[ \t]+,", ",", re.sub(r"[ \t]{2,}", " ", LORA_TAG.sub("", prompt))).strip(" ,\t")
    return cleaned, loras, notes


def request_from_a1111(text: str) -> tuple[dict[str, Any], list[str]]:
    """A request dict from A1111 `parameters`, and notes on what could not be carried over exactly."""
    parsed = parse_a1111(text)
    fields = parsed["fields"]
    if not fields:
        raise PngMetadataError("the parameters text has no 'Steps: ...' line")
    notes: list[str] = []
    prompt, loras, lora_notes = loras_from_prompt(parsed["prompt"])
    notes += lora_notes
    request: dict[str, Any] = {"prompt": prompt, "negative_prompt": parsed["negative_prompt"]}
    if loras:
        request["loras"] = loras

    def number(key: str, kind: type) -> Any:
        """The field as an int (exactly: never through a float) or a float; absent -> None."""
        if key not in fields:
            return None
        text = str(fields[key]).strip()
        if kind is int:
            if re.fullmatch(r"[+-]?\d+", text):
                return int(text)
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
                return int(value)  # "20.0"
            comma = " (thousands or decimals? write it without the comma)" if "," in text else ""
            raise PngMetadataError(f"{key} {text!r} in the parameters text is not a whole number{comma}")
        if _DECIMAL_COMMA.fullmatch(text):
            dotted = text.replace(",", ".")
            notes.append(f"{key} {text!r} read as {dotted} (a decimal comma)")
            text = dotted
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise PngMetadataError(f"{key} {text!r} in the parameters text is not a finite number")
        return value

    if (steps := number("Steps", int)) is not None:
        request["steps"] = steps
    if (seed := number("Seed", int)) is not None:
        request["seed"] = seed
    from engine.units import GUIDANCE, SCHEDULES

    solver, sampler_schedule, sampler_notes = solver_from_a1111(fields.get("Sampler", "Euler"))
    notes += sampler_notes
    request["solver"] = solver
    if sampler_schedule:
        request["schedule"] = sampler_schedule
    guidance = fields.get("Guidance", "cfg")
    request["guidance"] = GUIDANCE.canonical(guidance) or guidance
    for field, key in (("Guidance params", "guidance_params"), ("Sampler params", "solver_params")):
        if field in fields:
            try:
                params = json.loads(fields[field])
            except ValueError:
                params = None
            if isinstance(params, dict):
                request[key] = params
            else:
                notes.append(f"{field.lower()} {fields[field]!r} is not a JSON object; ignored")
    if (scale := number("CFG scale", float)) is not None:
        request["scale"] = scale
    if "Size" in fields:
        m = re.fullmatch(r"(\d+)x(\d+)", fields["Size"].strip())
        if m:
            request["width"], request["height"] = int(m.group(1)), int(m.group(2))
    schedule_type = fields.get("Schedule type")
    if schedule_type:
        schedule = SCHEDULES.canonical(schedule_type)
        if schedule is None:
            notes.append(f"schedule type {schedule_type!r} has no counterpart here; using the model's default")
        request["schedule"] = schedule or "default"
    if "Sigma schedule" in fields:
        request["schedule"] = fields["Sigma schedule"]
    if (p := number("TNR p", float)) is not None:
        request["tnr_power"] = p
    if (phi := number("CFG rescale", float)) is not None:
        request["cfg_rescale"] = phi
    if "Model" in fields:
        notes.append(f"made with model {fields['Model']!r}; the request uses the embedded model unless --model says")
    return request, notes


def read_png_text(path: Path) -> dict[str, str]:
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        # Past PIL's pixel limit (89 Mpx) an image is refused before its pixels are decoded (load() reads
        # them to reach the text chunks after the image data): no generation output is that large.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                text = dict(getattr(im, "text", {}) or {})
                fmt = im.format
    except FileNotFoundError:
        raise PngMetadataError(f"{path}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PngMetadataError(f"{path}: refused, the image is too large ({str(e).split(',')[0]})") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:  # ValueError: PIL's text chunk limits
        raise PngMetadataError(f"{path}: not a readable image ({e})") from None
    if fmt != "PNG":
        raise PngMetadataError(f"{path}: not a PNG file ({fmt})")
    return text


def request_from_png(path: Path) -> tuple[dict[str, Any], str, list[str]]:
    """(request dict, source "tnr-lab" or "a1111", notes) from a PNG's text chunks."""
    text = read_png_text(path)
    damage = None
    if TNR_CHUNK in text:
        try:
            payload = json.loads(text[TNR_CHUNK])
        except json.JSONDecodeError as e:
            damage = f"its '{TNR_CHUNK}' chunk is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        except RecursionError:
            damage = f"its '{TNR_CHUNK}' chunk is JSON nested too deeply to be a request"
        else:
            request = payload.get("request") if isinstance(payload, dict) else None
            if isinstance(request, dict):
                return dict(request), "tnr-lab", []
            damage = f"its '{TNR_CHUNK}' chunk holds no request object"
    if A1111_CHUNK in text:
        try:
            request, notes = request_from_a1111(text[A1111_CHUNK])
        except PngMetadataError as e:
            raise PngMetadataError(f"{path}: {e}" + (f"; and {damage}" if damage else "")) from None
        if damage:
            notes = [f"{damage}; read the A1111 'parameters' text instead", *notes]
        return request, "a1111", notes
    if damage:
        raise PngMetadataError(f"{path}: {damage}")
    raise PngMetadataError(f"{path}: no generation parameters (neither a 'tnr-lab' nor a 'parameters' chunk)")

"""GenerationRequest: the one description of a run (ARCHITECTURE.md, "The request is the contract").

This module must stay free of torch/diffusers imports: the TUI validates as the user types with
these same rules, before any heavy library is loaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from engine import units

# 2: solver_params / guidance_params (units' own knobs). 3: schedule "karras" is k-diffusion's (the full trained
# range); format 2's "karras" (diffusers' Euler end points) is "karras_diffusers". Older requests are upgraded
# by `from_dict`.
REQUEST_FORMAT = 3

# Format 2's "karras" took its end points from the config's spacing grid, as diffusers' Euler does.
KARRAS_BEFORE_FORMAT_3 = "karras_diffusers"

EMBEDDED_MODEL = "embedded"

# The solvers, guidance methods and schedules are units (engine/units.py): their names, parameters and costs
# come from the registries, never from lists here. `SOLVERS`, `GUIDANCE_METHODS` and `SCHEDULES` below are
# read from them on access (module __getattr__) for callers that want the names.
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
DTYPES: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16")

MAX_SEED = 2**63 - 1
# Bounds that keep every value storable (SQLite integers are 64-bit) and every run finite; far above use.
MAX_STEPS = 10_000  # also the bound of preview_every / decode_every
MAX_SIZE = 16_384  # pixels per side (SDXL's native size is 1024)


class RequestError(ValueError):
    """A request parameter is invalid; the message is meant for the user as is."""


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a run: its file, its weight, and (once the run has read it) the file's sha256.

    The sha256 is filled in by the sampler (the resolved request the history keeps): a re-run of the request
    checks it, so a LoRA file changed since the run is said, not silently used.
    """

    path: str
    weight: float = 1.0
    sha256: str | None = None


PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class WeightedPrompt:
    """One prompt of the N-prompt form (MATH.md 5) with its own scale."""

    text: str
    scale: float = 1.0


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    # N-prompt form: when non-empty, these prompts (with their scales) replace prompt/negative/scale in
    # the guidance base: B = mean(p_i), base = B + sum s_i (p_i - B).
    prompts: tuple[WeightedPrompt, ...] = ()
    model: str = EMBEDDED_MODEL
    width: int | None = None  # None: the model's native size
    height: int | None = None
    seed: int = 0
    steps: int = 20
    solver: str = "euler"
    solver_params: dict[str, Any] = field(default_factory=dict)  # the solver unit's own knobs (eta, s_noise, ...)
    schedule: str = "default"  # "default": the spacing the model's scheduler config names
    # Karras rho, and the exponent of the "power" timestep warp; None: the schedule's own default (7 and 1).
    schedule_rho: float | None = None
    # Hand the UNet the nearest trained timestep instead of the fractional t of log-sigma interpolation (as
    # ComfyUI and diffusers' multistep schedulers do); the input scaling keeps the exact sigma (MATH.md 9).
    discrete_timesteps: bool = False
    guidance: str = "cfg"
    guidance_params: dict[str, Any] = field(default_factory=dict)  # the guidance unit's own knobs
    scale: float | None = None  # None: the method's default (its unit's default_scale, or the model's)
    tnr_power: float = 0.25  # exponent p of the TNR factor S = 2 - abar(sigma_next)**p
    cfg_rescale: float | None = None  # phi of CFG rescale, 0 = off; None: the model's default (MATH.md 8)
    tnr: bool = False  # True Noise Removal on the method's guided pair (--tnr; tnr and tnr-cfg have it always)
    guidance_sigma_min: float | None = None  # outside [min, max] guidance falls back to the conditional eps
    guidance_sigma_max: float | None = None
    preview_every: int = 1  # cheap latent-to-RGB preview every N steps (0 = never)
    decode_every: int = 0  # full decode every N steps (0 = only the final image)
    # Per-step rows (engine.telemetry; the history keeps them with the run). Off: no rows, the same latent.
    telemetry: bool = True
    # The history keeps the run's per-step latent-to-RGB frames and its decoded frames (every decode_every
    # steps) as files beside its image (tnr_tui.services.runs); the TUI turns it on, the CLI's --keep-frames.
    keep_frames: bool = False
    device: str = "auto"
    dtype: str = "auto"
    tags: dict[str, str] = field(default_factory=dict)  # free labels, e.g. {"sweep": "<id>"}
    # LoRAs applied to the model for this run (safetensors files, in order); switching them does not reload
    # the model (engine.models.lora).
    loras: tuple[LoraSpec, ...] = ()
    # Overrides of what the model's files say (None: the model's own): a single file without markers.
    prediction_type: str | None = None  # "epsilon" or "v_prediction"
    zero_snr: bool | None = None  # rescale_betas_zero_snr (and trailing spacing when it turns it on)

    def __post_init__(self) -> None:
        # Normalise the prompts given as lists/dicts (JSON) into WeightedPrompt tuples.
        if not isinstance(self.prompts, (list, tuple)):
            raise RequestError(f"prompts must be a list of (text, scale) pairs, got {self.prompts!r}")
        if not isinstance(self.tags, dict):
            raise RequestError(f"tags must map text to text, got {self.tags!r}")
        for name in ("solver_params", "guidance_params"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise RequestError(f"{name.replace('_', ' ')} must map names to values, got {value!r}")
            object.__setattr__(self, name, dict(value))
        norm = []
        for p in self.prompts:
            if isinstance(p, WeightedPrompt):
                norm.append(p)
            elif isinstance(p, dict):
                norm.append(WeightedPrompt(str(p.get("text", "")), _as_float("prompt scale", p.get("scale", 1.0))))
            elif isinstance(p, (list, tuple)) and len(p) == 2:
                norm.append(WeightedPrompt(str(p[0]), _as_float("prompt scale", p[1])))
            else:
                raise RequestError(f"prompts: each entry must be (text, scale), got {p!r}")
        object.__setattr__(self, "prompts", tuple(norm))
        object.__setattr__(self, "tags", dict(self.tags))
        object.__setattr__(self, "loras", _lora_specs(self.loras))
        self.validate()

    # ---- derived values -------------------------------------------------------------------------

    @property
    def effective_scale(self) -> float:
        return units.GUIDANCE.get(self.guidance).default_scale if self.scale is None else float(self.scale)

    @property
    def model_evaluations(self) -> int:
        """Planned model evaluations of the run (engine.evaluations; exact unless a sigma window is set, where
        it is an upper bound: the grid decides which steps fall outside)."""
        from engine.evaluations import planned_evaluations

        return planned_evaluations(self)

    # ---- validation ------------------------------------------------------------------------------

    def validate(self) -> None:
        for f in fields(self):
            msg = validate_field(f.name, getattr(self, f.name))
            if msg:
                raise RequestError(msg)
        lo, hi = self.guidance_sigma_min, self.guidance_sigma_max
        if lo is not None and hi is not None and lo > hi:
            raise RequestError(f"guidance sigma window: min ({lo}) is larger than max ({hi})")
        try:
            units.resolve_params(units.SOLVERS.get(self.solver), self.solver_params)
            method = units.GUIDANCE.get(self.guidance)
            resolved = units.resolve_params(method, self.guidance_params)
            check = getattr(method, "check_settings", None)  # parameters that must agree with each other
            conflict = check(resolved) if check is not None else None
            if conflict:
                raise units.UnitError(f"guidance method {self.guidance!r}: {conflict}")
        except units.UnitError as e:
            raise RequestError(str(e)) from None
        if self.prompts and method.uses_scale and not method.n_prompt:
            raise RequestError(f"guidance method {self.guidance!r} does not take the N-prompt form (weighted prompts)")

    # ---- JSON round trip -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prompts"] = [{"text": p.text, "scale": p.scale} for p in self.prompts]
        d["loras"] = [_lora_dict(lora) for lora in self.loras]
        d["format"] = REQUEST_FORMAT
        return d

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        if not isinstance(data, dict):
            raise RequestError(f"a request must be a JSON object, got {type(data).__name__}")
        data = upgrade(dict(data))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RequestError(f"unknown request field(s): {', '.join(unknown)}")
        if "prompt" not in data:
            raise RequestError("a request needs a prompt")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> GenerationRequest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RequestError(f"request is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> GenerationRequest:
        return replace(self, **changes)


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A stored request (any format this version knows) in today's format, `format` key removed.

    1 -> 2: the units' parameter dicts are new (empty: every unit of format 1 had only flat fields).
    2 -> 3: schedule "karras" becomes "karras_diffusers" (the grid those runs sampled; "karras" is now
    k-diffusion's full-range Karras), so a stored run re-samples bit-identically.
    """
    fmt = data.pop("format", REQUEST_FORMAT)
    if not _is_int(fmt) or not 1 <= fmt <= REQUEST_FORMAT:
        raise RequestError(f"request format {fmt!r} is not supported (this version reads 1..{REQUEST_FORMAT})")
    if fmt < 2:
        data.setdefault("solver_params", {})
        data.setdefault("guidance_params", {})
    if fmt < 3 and data.get("schedule") == "karras":
        data["schedule"] = KARRAS_BEFORE_FORMAT_3
    return data


def __getattr__(name: str) -> Any:
    # The names of the registered units, for callers that list them (the registries are the truth).
    if name == "SOLVERS":
        return units.SOLVERS.names()
    if name == "GUIDANCE_METHODS":
        return units.GUIDANCE.names()
    if name == "SCHEDULES":
        return units.SCHEDULES.names()
    if name == "DEFAULT_SCALE":
        return {u.name: u.default_scale for u in units.GUIDANCE}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lora_specs(value: Any) -> tuple[LoraSpec, ...]:
    """LoRAs given as LoraSpec, {"path", "weight", "sha256"} dicts (JSON) or (path, weight) pairs."""
    if not isinstance(value, (list, tuple)):
        raise RequestError(f"loras must be a list of (path, weight) pairs, got {value!r}")
    specs = []
    for item in value:
        if isinstance(item, LoraSpec):
            specs.append(item)
        elif isinstance(item, dict) and set(item) <= {"path", "weight", "sha256"} and "path" in item:
            sha = item.get("sha256")
            specs.append(LoraSpec(item["path"], _as_float("LoRA weight", item.get("weight", 1.0)), sha))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            specs.append(LoraSpec(item[0], _as_float("LoRA weight", item[1])))
        else:
            raise RequestError(f"loras: each entry must be (path, weight), got {item!r}")
    return tuple(specs)


def _lora_dict(lora: LoraSpec) -> dict[str, Any]:
    d: dict[str, Any] = {"path": lora.path, "weight": lora.weight}
    if lora.sha256 is not None:
        d["sha256"] = lora.sha256
    return d


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise RequestError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise RequestError(f"{name} must be a finite number, got {value!r}")
    return v


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str | None:
    if value not in choices:
        return f"unknown {name} {value!r}; choose one of: {', '.join(choices)}"
    return None


def _unit_choice(registry: units.Registry[Any], value: Any) -> str | None:
    if not isinstance(value, str) or value not in registry:
        return _choice(registry.kind, value, registry.names())
    return None


def _finite(name: str, value: Any, *, minimum: float | None = None, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number, got {value!r}"
    if not math.isfinite(float(value)):
        return f"{name} must be a finite number, got {value!r}"
    if minimum is not None and value < minimum:
        return f"{name} must be at least {minimum}, got {value!r}"
    return None


def _size(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not _is_int(value) or value <= 0 or value % 8:
        return f"{name} must be a positive multiple of 8, got {value!r}"
    if value > MAX_SIZE:
        return f"{name} must be at most {MAX_SIZE}, got {value!r}"
    return None


def _count(name: str, value: Any, minimum: int, maximum: int = MAX_STEPS) -> str | None:
    if not _is_int(value) or not minimum <= value <= maximum:
        return f"{name} must be a whole number in {minimum}..{maximum}, got {value!r}"
    return None


def validate_field(name: str, value: Any) -> str | None:
    """The message for an invalid value of one field, or None. Shared by the CLI and the TUI inputs."""
    if name in ("prompt", "negative_prompt", "model"):
        if not isinstance(value, str):
            return f"{name} must be text, got {type(value).__name__}"
        if name == "model" and not value.strip():
            return "model must name a directory, a .safetensors file, a hub id, or 'embedded'"
        return None
    if name == "prompts":
        for p in value:
            if not isinstance(p, WeightedPrompt):
                return f"prompts: each entry must be (text, scale), got {p!r}"
            msg = _finite("prompt scale", p.scale)
            if msg:
                return msg
        if value and len(value) < 2:
            return "prompts: the N-prompt form needs at least two prompts"
        return None
    if name in ("width", "height"):
        return _size(name, value)
    if name == "seed":
        if not _is_int(value) or not 0 <= value <= MAX_SEED:
            return f"seed must be a whole number in 0..{MAX_SEED}, got {value!r}"
        return None
    if name == "steps":
        return _count("steps", value, 1)
    if name == "solver":
        return _unit_choice(units.SOLVERS, value)
    if name == "schedule":
        return _unit_choice(units.SCHEDULES, value)
    if name == "schedule_rho":
        msg = _finite("schedule rho", value, optional=True)
        if msg is None and value is not None and value <= 0:
            return f"schedule rho must be positive, got {value!r}"
        return msg
    if name == "guidance":
        return _unit_choice(units.GUIDANCE, value)
    if name == "scale":
        return _finite("scale", value, optional=True)
    if name == "tnr_power":
        msg = _finite("TNR exponent p", value)
        if msg is None and value <= 0:
            return f"TNR exponent p must be positive, got {value!r}"
        return msg
    if name == "tnr":
        return None if isinstance(value, bool) else f"tnr must be true or false, got {value!r}"
    if name == "discrete_timesteps":
        return None if isinstance(value, bool) else f"discrete timesteps must be true or false, got {value!r}"
    if name in ("telemetry", "keep_frames"):
        return None if isinstance(value, bool) else f"{name.replace('_', ' ')} must be true or false, got {value!r}"
    if name == "cfg_rescale":
        if value is None:
            return None
        msg = _finite("CFG rescale", value)
        if msg is None and not 0.0 <= value <= 1.0:
            return f"CFG rescale must be between 0 and 1, got {value!r}"
        return msg
    if name in ("guidance_sigma_min", "guidance_sigma_max"):
        return _finite(name.replace("_", " "), value, minimum=0.0, optional=True)
    if name in ("preview_every", "decode_every"):
        return _count(name.replace("_", " "), value, 0)
    if name == "device":
        if not isinstance(value, str) or not (value in DEVICES or value.startswith("cuda:")):
            return f"unknown device {value!r}; choose one of: {', '.join(DEVICES)} (or cuda:N)"
        return None
    if name == "dtype":
        return _choice("dtype", value, DTYPES)
    if name == "loras":
        for lora in value:
            if not isinstance(lora.path, str) or not lora.path.strip():
                return "a LoRA needs a file path"
            msg = _finite("LoRA weight", lora.weight)
            if msg:
                return msg
            if lora.sha256 is not None and (
                not isinstance(lora.sha256, str)
                or len(lora.sha256) != 64
                or any(ch not in "0123456789abcdef" for ch in lora.sha256)
            ):
                return f"LoRA {lora.path}: sha256 must be 64 lower-case hex digits, got {lora.sha256!r}"
        return None
    if name == "prediction_type":
        if value is None:
            return None
        return _choice("prediction type", value, PREDICTION_TYPES)
    if name == "zero_snr":
        return None if value is None or isinstance(value, bool) else f"zero_snr must be true or false, got {value!r}"
    if name == "tags":
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return "tags must map text to text"
        return None
    return None


def unit_registry(field: str) -> units.Registry[Any]:
    """The registry of the units a request field names: "solver", "guidance" or "schedule"."""
    return {"solver": units.SOLVERS, "guidance": units.GUIDANCE, "schedule": units.SCHEDULES}[field]


def parse_field(name: str, text: str) -> Any:
    """Parse a text input (CLI argument, TUI input) into a field value, raising RequestError."""
    text = text.strip()
    if name in ("width", "height", "seed", "steps", "preview_every", "decode_every"):
        try:
            value: Any = int(text)
        except ValueError:
            raise RequestError(f"{name.replace('_', ' ')} must be a whole number, got {text!r}") from None
    elif name in ("scale", "tnr_power", "cfg_rescale", "schedule_rho", "guidance_sigma_min", "guidance_sigma_max"):
        if text == "" and name in ("scale", "cfg_rescale", "schedule_rho", "guidance_sigma_min", "guidance_sigma_max"):
            return None
        value = _as_float(name.replace("_", " "), text)
    elif name in ("solver", "guidance", "schedule"):
        # A unit's A1111 / ComfyUI names ("Euler a", "DPM++ 2M", "Karras", any case) stand for it, as
        # `tnr-lab units` lists them; an unknown name stays as typed for the message below.
        value = unit_registry(name).canonical(text) or text
    else:
        value = text
    msg = validate_field(name, value)
    if msg:
        raise RequestError(msg)
    return value

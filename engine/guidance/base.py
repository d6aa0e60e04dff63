"""What every guidance method shares (MATH.md section 5).

A guidance method is one class in one module of this package, registered with `@GUIDANCE.register`: small
and pure, it turns a step's predictions into a direction pair (den, ren) that every solver moves along. Its
class attributes declare it (torch-free); an instance is made per run from the request (its scale and its
`guidance_params`), so state across steps (a momentum buffer) lives on the instance.

Notation: c the conditional eps, u the unconditional (negative-prompt) eps, n the true noise, g the scale,
S = 2 - abar(sigma_next)**p the TNR factor of the step (held fixed for all stages of the step).

Prediction kinds a method asks for: "cond" (the prompt), "uncond" (the negative prompt; zeros or "" as the
model family says), "perturbed" (a prompt through a perturbed pass of the model, one more evaluation: the
prompt, or the negative prompt where the method's `perturbed_prompt` says so), and texts of the method's own
(`extra_texts`: perp-neg's empty prompt "empty", dual-cfg's second prompt "cond2").

Space: diffusers' guiders combine the model's raw output (eps, or v for a v-prediction model). A method whose
combination is not an affine one with weights summing to 1 (`acts_in_output_space`) is handed the predictions
in the model's output space and its pair is converted back to eps (docs/MATH.md 5); affine ones are the same
in every space and see eps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from engine.units import Param, resolve_params

if TYPE_CHECKING:
    import torch

Pair = tuple["torch.Tensor", "torch.Tensor"]

PREDICTION_KINDS = ("uncond", "cond", "perturbed", "empty", "cond2")


# ---- the pieces methods share ---------------------------------------------------------------------------


def tnr_factor(abar_next: float, p: float = 0.25) -> float:
    """S = 2 - abar(sigma_next)**p: from ~1.68 on the first of 15 SDXL trailing steps to 1 at sigma 0."""
    return 2.0 - abar_next**p


def abar_of_sigma(sigma: float) -> float:
    """abar(sigma) = 1 / (1 + sigma**2) (as engine.schedule, for floats; no torch here)."""
    return 1.0 / (1.0 + sigma**2)


def tnr_push(e: torch.Tensor, n: torch.Tensor, S: float) -> torch.Tensor:
    """True Noise Removal on one eps: n + S (e - n)."""
    return n + S * (e - n)


def n_prompt_base(predictions: Sequence[torch.Tensor], scales: Sequence[float]) -> torch.Tensor:
    """The N-prompt base: B = mean(p_i), base = B + sum_i s_i (p_i - B)."""
    B = sum(predictions) / len(predictions)
    return B + sum(s * (p - B) for s, p in zip(scales, predictions, strict=True))


def equivalent_cfg_scale(scales: Sequence[float]) -> float | None:
    """For two prompts [u, c] with scales [s0, s1] the base is CFG with g = (1 + s1 - s0) / 2; None for N != 2."""
    if len(scales) != 2:
        return None
    s0, s1 = scales
    return (1.0 + s1 - s0) / 2.0


def rescale_cfg(guided: torch.Tensor, c: torch.Tensor, phi: float) -> torch.Tensor:
    """CFG rescale (Lin et al. 2023, diffusers' `rescale_noise_cfg`): match the guided eps' std to c's, mix by phi."""
    if phi == 0:
        return guided
    dims = list(range(1, guided.ndim))
    rescaled = guided * (c.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * guided


def eps_to_v(eps: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The v a v-prediction model would output at the VE latent x: eps = a v + s z with a = 1 / sqrt(sigma^2 + 1),
    s = sigma a and z = a x (the VP latent the UNet sees), so v = (eps - sigma a^2 x) / a (MATH.md 2)."""
    a = 1.0 / math.sqrt(sigma * sigma + 1.0)
    return (eps - (sigma * a * a) * x) / a


def v_to_eps(v: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """eps = a v + sigma a^2 x, the bundle's own conversion (engine/models/bundle.py eps)."""
    a = 1.0 / math.sqrt(sigma * sigma + 1.0)
    return a * v + (sigma * a * a) * x


# ---- what a method sees ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepInfo:
    """The step a prediction belongs to."""

    index: int  # 0-based
    steps: int
    sigma: float  # the step's start sigma
    sigma_next: float
    S: float | None = None  # the TNR factor, where the run uses TNR


@dataclass
class Predictions:
    """A step's predictions at one point, by kind (each [batch, C, h, w]); the N-prompt form has `prompts`."""

    cond: torch.Tensor
    uncond: torch.Tensor | None = None
    perturbed: torch.Tensor | None = None
    true_noise: torch.Tensor | None = None
    empty: torch.Tensor | None = None  # perp-neg: the empty prompt
    cond2: torch.Tensor | None = None  # dual-cfg: the second prompt
    prompts: tuple[torch.Tensor, ...] = ()  # N-prompt form: one per prompt, with `scales`
    scales: tuple[float, ...] = ()
    rescale_reference: int = 0  # N-prompt form: the prompt whose std CFG rescale matches (the largest scale)
    extras: dict[str, float] = field(default_factory=dict)  # telemetry a method adds for the step

    def cfg_base(self, g: float, phi: float = 0.0) -> torch.Tensor:
        """u + g (c - u), CFG-rescaled by phi; in the N-prompt form the N-prompt base stands there (MATH.md 5)."""
        if self.prompts:
            return rescale_cfg(n_prompt_base(self.prompts, self.scales), self.prompts[self.rescale_reference], phi)
        assert self.uncond is not None
        return rescale_cfg(self.uncond + g * (self.cond - self.uncond), self.cond, phi)

    @property
    def negative(self) -> torch.Tensor:
        """u, or in the N-prompt form the first prompt (it plays the negative, MATH.md 7)."""
        if self.prompts:
            return self.prompts[0]
        assert self.uncond is not None
        return self.uncond


class GuidanceMethod:
    """Base of every guidance method unit. Subclasses set the class attributes and implement `combine`."""

    kind: ClassVar[str] = "guidance method"
    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    kinds: ClassVar[tuple[str, ...]] = ("uncond", "cond")  # the predictions it may ask for, in batch order
    default_scale: ClassVar[float] = 1.0  # the scale a request without one gets (a model's tnr_lab.json may differ)
    uses_scale: ClassVar[bool] = True
    scale_help: ClassVar[str] = "guidance scale"
    n_prompt: ClassVar[bool] = False  # accepts the N-prompt form (per-prompt scales)
    rescale: ClassVar[bool] = False  # accepts CFG rescale (phi)
    tnr: ClassVar[bool] = False  # True Noise Removal is always on (tnr, tnr-cfg)
    # Combines in the model's output space (v on a v-prediction model), as diffusers' guiders do: every method
    # that is not an affine combination with weights summing to 1 (those commute with the eps <-> v map).
    output_space: ClassVar[bool] = False
    perturbed_prompt: ClassVar[str] = "cond"  # the text the perturbed pass sees ("uncond": the negative prompt)
    params: ClassVar[tuple[Param, ...]] = ()
    rank: ClassVar[int] = 100

    def __init__(self, scale: float, settings: Mapping[str, Any] | None = None, *, cfg_rescale: float = 0.0) -> None:
        self.scale = scale
        self.cfg_rescale = cfg_rescale or 0.0  # None (a request whose model decides) counts as off here
        self.settings = resolve_params(type(self), settings)
        self.run_seed = 0  # the request's seed (GuidancePlan sets it): seeds a perturbation's own randomness

    @classmethod
    def uses_negative(cls) -> bool:
        return "uncond" in cls.kinds or ("perturbed" in cls.kinds and cls.perturbed_prompt == "uncond")

    def acts_in_output_space(self) -> bool:
        """True where the combination must see the model's raw output (nonlinear; CFG rescale included)."""
        return self.output_space or (self.rescale and self.cfg_rescale > 0)

    def extra_texts(self) -> dict[str, str]:
        """Texts besides the prompt and the negative prompt, by prediction kind ("empty", "cond2")."""
        return {}

    def perturbation(self) -> Perturbation:
        """What the perturbed pass changes in the model (methods with the "perturbed" kind)."""
        raise NotImplementedError(f"{self.name} has no perturbed pass")

    def needs(self, step: StepInfo) -> tuple[str, ...]:
        """The prediction kinds of this step (its own window may drop some); the count of evaluations reads it."""
        return self.kinds

    def combine(self, p: Predictions, step: StepInfo) -> Pair:
        """(den, ren) from the step's predictions."""
        raise NotImplementedError


# ---- diffusers' guider conventions, for the methods named after its guiders ------------------------------

GUIDER_START = Param("start", 0.0, minimum=0.0, maximum=1.0, help="fraction of the steps before the method starts")
GUIDER_STOP = Param("stop", 1.0, minimum=0.0, maximum=1.0, help="fraction of the steps after which it stops")
ORIGINAL_FORMULATION = Param(
    "use_original_formulation",
    False,
    kind="bool",
    help="guide from c instead of u (the papers' form; diffusers' default is u)",
)


def in_step_window(step: StepInfo, start: float, stop: float) -> bool:
    """diffusers' guider window: int(start N) <= i < int(stop N), a fraction of steps (not a sigma range)."""
    return int(start * step.steps) <= step.index < int(stop * step.steps)


def in_strict_step_window(step: StepInfo, start: float, stop: float) -> bool:
    """The perturbed term's window of diffusers' PAG, SEG and SLG guiders: int(start N) < i < int(stop N),
    strictly on both ends (so step 0 is never perturbed for start >= 0)."""
    return int(start * step.steps) < step.index < int(stop * step.steps)


@dataclass(frozen=True)
class Perturbation:
    """What a perturbed pass changes, for `ModelBundle.eps_perturbed` (engine/models/perturb.py does it).

    kind: "attention_scores" (PAG: identity self-attention, diffusers' LayerSkipConfig(skip_attention_scores)),
    "layer_skip" (SLG, autoguidance: LayerSkipConfig(skip_attention, skip_ff, dropout)), "smoothed_energy" (SEG:
    the self-attention queries blurred). layers: regular expressions over the UNet's self-attention module
    names, as the PAG pipelines take them ("mid", "down_blocks.2", "up_blocks.0.attentions.1").
    """

    kind: str
    layers: tuple[str, ...]
    skip_attention: bool = False
    skip_ff: bool = False
    dropout: float = 1.0
    blur_sigma: float = 9999999.0
    seed: int = 0  # where dropout < 1: the pass's dropout masks come from this seed


def layer_names(text: Any) -> tuple[str, ...]:
    """Comma-separated layer patterns -> a tuple ("mid, up_blocks.0" -> ("mid", "up_blocks.0"))."""
    return tuple(part.strip() for part in str(text).split(",") if part.strip())


class LayerParam(Param):
    """A text parameter naming UNet layers the PAG pipelines' way: comma-separated regular expressions."""

    def check(self, value: Any) -> str | None:
        message = super().check(value)
        if message:
            return message
        import re

        names = layer_names(value)
        if not names:
            return f"{self.name} needs at least one layer name (e.g. mid)"
        for name in names:
            try:
                re.compile(name)
            except re.error as e:
                return f"{self.name}: {name!r} is not a valid pattern ({e})"
        return None


class FloatsParam(Param):
    """A list of numbers (JSON list; on the command line "10,5"), each within the bounds; `single` also takes
    one number (diffusers' `float | list[float]` arguments)."""

    def __init__(self, *args: Any, single: bool = False, length: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "single", single)
        object.__setattr__(self, "length", length)

    def check(self, value: Any) -> str | None:
        if value is None:
            return None if self.optional else f"{self.name} needs a value"
        if self.single and isinstance(value, (int, float)) and not isinstance(value, bool):
            return Param.check(replace_kind(self, "float"), value)
        if not isinstance(value, (list, tuple)) or not value:
            return f"{self.name} must be a list of numbers, got {value!r}"
        if self.length is not None and len(value) != self.length:
            return f"{self.name} must have {self.length} values, got {len(value)}"
        scalar = replace_kind(self, "float")
        for item in value:
            message = Param.check(scalar, item)
            if message:
                return message
        return None

    def parse(self, text: str) -> Any:
        cleaned = text.strip().strip("[]()")
        if cleaned.lower() in ("", "none") and self.optional:
            return None
        parts = [p for p in cleaned.replace(";", ",").replace(" ", ",").split(",") if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            from engine.units import UnitError

            raise UnitError(f"{self.name} must be numbers separated by commas, got {text!r}") from None
        value: Any = values[0] if self.single and len(values) == 1 else values
        message = self.check(value)
        if message:
            from engine.units import UnitError

            raise UnitError(message)
        return value

    def describe(self) -> str:
        default = "off" if self.default is None else ",".join(f"{v:g}" for v in _as_list(self.default))
        lo = "" if self.minimum is None else f"{self.minimum:g}"
        hi = "" if self.maximum is None else f"{self.maximum:g}"
        bounds = f" [{lo}..{hi}]" if lo or hi else ""
        return f"{self.name}={default}{bounds}: {self.help}" if self.help else f"{self.name}={default}{bounds}"


def replace_kind(param: Param, kind: str) -> Param:
    return Param(param.name, None, kind=kind, minimum=param.minimum, maximum=param.maximum)


def _as_list(value: Any) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]


def per_level(value: Any, levels: int) -> list[float]:
    """diffusers' `float | list[float]`: one value for every level, or one per level."""
    return _as_list(value) * levels if not isinstance(value, (list, tuple)) else _as_list(value)


def guider_off(scale: float, original: bool) -> bool:
    """A diffusers guider is off at scale 1 (0 with the original formulation): one prediction, c."""
    return math.isclose(scale, 0.0 if original else 1.0)


class DiffusersGuider(GuidanceMethod):
    """Base of the methods named after diffusers' CFG-family guiders: c and u, its step-fraction window
    (`start`, `stop`), off at scale 1 (0 with `use_original_formulation`), `guidance_rescale` as the request's
    `cfg_rescale` applied to the result (as the guider's `rescale_noise_cfg(pred, pred_cond, ...)`), and the
    combination in the model's output space."""

    default_scale = 7.5
    scale_help = "guidance_scale g (1 = the conditional prediction)"
    rescale = True
    output_space = True

    def cfg_active(self, step: StepInfo) -> bool:
        s = self.settings
        return in_step_window(step, s["start"], s["stop"]) and not guider_off(self.scale, s["use_original_formulation"])

    def needs(self, step: StepInfo) -> tuple[str, ...]:
        return ("uncond", "cond") if self.cfg_active(step) else ("cond",)

    def base(self, c: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Where the guided move starts: u, or c with the original formulation."""
        return c if self.settings["use_original_formulation"] else u

    def finish(self, pred: torch.Tensor, c: torch.Tensor) -> Pair:
        guided = rescale_cfg(pred, c, self.cfg_rescale)
        return guided, guided

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> str | None:
        """A message where parameters disagree with each other (each one alone is checked by its Param)."""
        if "start" in settings and "stop" in settings and not _below_or_equal(settings["start"], settings["stop"]):
            return f"start ({settings['start']}) is after stop ({settings['stop']})"
        return None


def _below_or_equal(a: Any, b: Any) -> bool:
    return all(x <= y for x, y in zip(_as_list(a), _as_list(b), strict=False))


def flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm over all non-batch dimensions, shaped to broadcast ([B, 1, 1, 1] for a latent)."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.ndim - 1)))


def flat_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample dot product over all non-batch dimensions, shaped to broadcast."""
    return (a.flatten(1) * b.flatten(1)).sum(dim=1).view(-1, *([1] * (a.ndim - 1)))


class PerturbedGuider(DiffusersGuider):
    """Base of PAG, SEG and SLG as diffusers' guiders: CFG (c, u) plus a perturbed pass p of the prompt,

        den = ren = u + g (c - u) + s (c - p)          (c + ... with use_original_formulation)

    where each term is on inside its own window: CFG in int(start N) <= i < int(stop N) and away from scale 1,
    the perturbed term strictly inside int(p_start N) < i < int(p_stop N) and away from s = 0. With CFG off it
    is p + s (c - p) (c + s (c - p)). Subclasses name the perturbed scale and window parameters as their guider.
    (diffusers 0.42's guiders install their hooks by counting prepare_models calls, which with CFG off leaves
    the second, perturbed, pass unperturbed: the lab perturbs it.)
    """

    kinds = ("uncond", "cond", "perturbed")
    perturbed_names: ClassVar[tuple[str, str, str]] = ("", "", "")  # scale, start, stop parameter names

    def perturbed_scale(self) -> float:
        return float(self.settings[self.perturbed_names[0]])

    def perturbed_active(self, step: StepInfo) -> bool:
        _, start, stop = self.perturbed_names
        inside = in_strict_step_window(step, self.settings[start], self.settings[stop])
        return inside and not math.isclose(self.perturbed_scale(), 0.0)

    def needs(self, step: StepInfo) -> tuple[str, ...]:
        kinds = ("uncond", "cond") if self.cfg_active(step) else ("cond",)
        return (*kinds, "perturbed") if self.perturbed_active(step) else kinds

    def combine(self, p: Predictions, step: StepInfo) -> Pair:
        c = p.cond
        cfg, perturbed = self.cfg_active(step), self.perturbed_active(step)
        s = self.perturbed_scale()
        if not cfg and not perturbed:
            return self.finish(c, c)
        term = s * (c - p.perturbed) if perturbed else None
        if term is not None:
            p.extras["perturbed_term"] = term  # telemetry takes its norm
        if not cfg:
            return self.finish(self.base(c, p.perturbed) + term, c)
        pred = self.base(c, p.uncond) + self.scale * (c - p.uncond)
        if perturbed:
            pred = pred + term
        return self.finish(pred, c)

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> str | None:
        _, start, stop = cls.perturbed_names
        if settings[start] > settings[stop]:
            return f"{start} ({settings[start]}) is after {stop} ({settings[stop]})"
        return super().check_settings(settings)


LAYERS_HELP = (
    "self-attention layers as the PAG pipelines name them: comma-separated patterns searched in the UNet's "
    "module names (mid, down_blocks.2, up_blocks.0.attentions.1)"
)

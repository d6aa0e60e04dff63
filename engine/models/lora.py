"""LoRAs on a loaded model: read through diffusers' LoRA loaders (peft), switched without reloading the model.

    bundle.set_loras([LoraSpec(path, weight), ...])  -> the same specs with each file's sha256 filled in

- Formats: whatever diffusers' `lora_state_dict` reads for the family (kohya / A1111 `lora_unet_*`,
  `lora_te*_*`; diffusers and peft layouts), safetensors only: a pickled file (.ckpt, .pt, .bin, ...) is
  refused, as the loader refuses pickled models.
- Each file is loaded once per bundle as a peft adapter named after its sha256 and kept (up to `KEEP`
  adapters); a run activates its LoRAs with their weights (`set_adapters`, as diffusers' pipelines do) and a
  run without LoRAs disables them all, so switching costs no model reload.
- Before diffusers sees a file, every LoRA layer in it is matched with a module of this model and its shapes
  checked: a LoRA of another family (SDXL's on SD 1.5: no `text_encoder_2`, other widths) or with wrong
  shapes is one line naming the file and the first layer that does not fit. After loading, the number of
  layers peft injected is checked against the file's, so nothing is dropped silently.
- One fix-up, for transformers >= 5.6 (CLIPTextModel flattened): diffusers turns kohya's text-encoder
  attention layers into its old `self_attn.to_q_lora.down` names, which its text-encoder loader then drops
  (measured with diffusers 0.42.1, transformers 5.24); we rename them to the `q_proj.lora_linear_layer` form
  it loads (its MLP layers already use that form).

`sha256` is over the whole file (what the history records); `a1111_hash` is A1111's short LoRA hash (the
first 12 hex digits of the sha256 of the tensor data after the safetensors header, A1111's "addnet" hash),
written in the PNG's `Lora hashes` field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.loras import (  # noqa: F401  (re-exported: the torch-free half)
    LORA_DIRS_ENV,
    PICKLE_SUFFIXES,
    file_hashes,
    lora_dirs,
    lora_name,
    parse_lora_arg,
    resolve_lora_path,
)
from engine.models.errors import ModelError

KEEP = 8  # adapters kept loaded per model (the least recently used inactive one goes first)


class LoraError(ModelError):
    """A LoRA cannot be used; the message names the file."""


@dataclass(frozen=True)
class LoadedLora:
    path: Path
    sha256: str
    a1111_hash: str
    adapter: str  # the peft adapter name (no dots allowed)
    components: tuple[str, ...]  # "unet", "text_encoder", "text_encoder_2": what it changes


def check_lora_file(path: Path) -> None:
    """The file exists, is not pickled, and is a readable safetensors file; else LoraError naming it."""
    from safetensors import safe_open

    where = f" (also looked in {LORA_DIRS_ENV})" if lora_dirs() and len(path.parts) == 1 else ""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LoraError(
            f"LoRA {path}: refusing a pickled file ({path.suffix}): unpickling can run arbitrary code; "
            "convert it to .safetensors"
        )
    if not path.is_file():
        head, sep, tail = str(path).rpartition(":")
        if sep and head and Path(head).is_file():  # PATH:WEIGHT with a weight that is not a number
            raise LoraError(f"LoRA {path}: the weight after ':' must be a number, got {tail!r}")
        if path.is_dir():  # said as it is: "no such file" sent the user looking for a missing path
            raise LoraError(f"LoRA {path}: a directory, not a .safetensors file")
        raise LoraError(f"LoRA {path}: no such file{where}")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as exc:  # safetensors raises its own error types (a pickle renamed .safetensors too)
        raise LoraError(f"LoRA {path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from exc
    if not keys:
        raise LoraError(f"LoRA {path}: the file holds no tensors")


# ---- matching a LoRA's layers with the model's modules -------------------------------------------------------

_TE_OLD = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
_PATTERNS = (
    (re.compile(r"^(?P<m>.+)\.lora_(?P<k>A|B)(\.[^.]+)?\.weight$"), {"A": "down", "B": "up"}),
    (re.compile(r"^(?P<m>.+)\.lora\.(?P<k>down|up)\.weight$"), None),
    (re.compile(r"^(?P<m>.+)\.lora_linear_layer\.(?P<k>down|up)\.weight$"), None),
)
_OLD_PROCESSOR = re.compile(r"^(?P<m>.+)\.processor\.(?P<p>to_q|to_k|to_v|to_out)_lora\.(?P<k>down|up)\.weight$")
_OLD_TEXT = re.compile(r"^(?P<m>.+)\.(?P<p>to_q|to_k|to_v|to_out)_lora\.(?P<k>down|up)\.weight$")


def fix_text_encoder_names(state: dict[str, Any], alphas: dict[str, Any] | None) -> tuple[dict, dict | None]:
    """Rename diffusers' old text-encoder attention names (`self_attn.to_q_lora.down.weight`) to the
    `self_attn.q_proj.lora_linear_layer.down.weight` form its text-encoder loader reads (module docstring)."""

    def fixed(key: str) -> str:
        if not key.startswith("text_encoder"):
            return key
        m = re.match(r"^(.+\.self_attn)\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight(\.alpha)?$", key)
        if m is None:
            return key
        return f"{m[1]}.{_TE_OLD[m[2]]}.lora_linear_layer.{m[3]}.weight{m[4] or ''}"

    state = {fixed(k): v for k, v in state.items()}
    if alphas is not None:
        alphas = {fixed(k): v for k, v in alphas.items()}
    return state, alphas


def _target(key: str) -> tuple[str, str, str] | None:
    """(component, module path, "down"/"up") of one LoRA tensor name in diffusers' converted state dict."""
    component, _, rest = key.partition(".")
    if component not in ("unet", "text_encoder", "text_encoder_2"):
        return None
    m = _OLD_PROCESSOR.match(rest)
    if m is not None:
        proj = "to_out.0" if m["p"] == "to_out" else m["p"]
        return component, f"{m['m']}.{proj}", m["k"]
    if component != "unet":
        m = _OLD_TEXT.match(rest)
        if m is not None:
            return component, f"{m['m']}.{_TE_OLD[m['p']]}", m["k"]
    for pattern, kinds in _PATTERNS:
        m = pattern.match(rest)
        if m is not None:
            return component, m["m"], (kinds[m["k"]] if kinds else m["k"])
    return None


def _module(model: Any, path: str) -> Any:
    for candidate in (path, path.removeprefix("text_model.")):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    return None


def _features(module: Any) -> tuple[int, int] | None:
    base = getattr(module, "base_layer", module)  # a module peft already wrapped for another adapter
    if hasattr(base, "in_features"):
        return int(base.in_features), int(base.out_features)
    if hasattr(base, "in_channels"):
        return int(base.in_channels), int(base.out_channels)
    return None


def check_fits(path: Path, state: dict[str, Any], models: dict[str, Any]) -> dict[str, set[str]]:
    """Each LoRA layer's module exists in this model with matching shapes; returns component -> modules.

    Raises LoraError naming the file and the first layer that does not fit (another family, other widths).
    """
    targets: dict[str, set[str]] = {}
    for key, tensor in state.items():
        found = _target(key)
        if found is None:
            continue  # alphas, DoRA magnitudes, biases: not layers of their own
        component, module_path, kind = found
        model = models.get(component)
        what = f"{component}.{module_path}"
        if model is None:
            raise LoraError(f"LoRA {path}: it changes {component}, which this model does not have (another family?)")
        module = _module(model, module_path)
        features = _features(module) if module is not None else None
        if features is None:
            raise LoraError(f"LoRA {path}: layer {what} has no counterpart in this model (another family?)")
        fan_in, fan_out = features
        shape = tuple(tensor.shape)
        ok = (shape[1] == fan_in) if kind == "down" else (shape[0] == fan_out)
        if len(shape) < 2 or not ok:
            expected = f"[rank, {fan_in}]" if kind == "down" else f"[{fan_out}, rank]"
            raise LoraError(
                f"LoRA {path}: layer {what} ({kind}) is {list(shape)}, this model needs {expected} "
                "(a LoRA of another family or model?)"
            )
        targets.setdefault(component, set()).add(module_path)
    if not targets:
        raise LoraError(f"LoRA {path}: no LoRA layers that diffusers' loaders read (not a LoRA file?)")
    return targets


def _injected(model: Any, adapter: str) -> int:
    """How many layers of `model` carry `adapter` (peft's tuner layers)."""
    count = 0
    for module in model.modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is not None and hasattr(lora_a, "keys") and adapter in lora_a.keys():
            count += 1
    return count


def require_peft() -> None:
    try:
        import peft  # noqa: F401
    except ImportError as exc:
        raise LoraError(
            "LoRA needs the peft package, which is not installed: pip install 'tnr-lab[lora]' (or pip install peft)"
        ) from exc


# ---- the bundle's LoRA state -----------------------------------------------------------------------------------


class LoraState:
    """The LoRAs loaded into one bundle's models and which are active (engine.models.bundle.set_loras)."""

    def __init__(self) -> None:
        self.loaded: dict[str, LoadedLora] = {}  # sha256 -> adapter, in least-recently-used order
        self.active: tuple[tuple[str, float], ...] = ()  # (sha256, weight)

    def models(self, bundle: Any) -> dict[str, Any]:
        found = {"unet": bundle.unet, "text_encoder": bundle.text_encoder}
        if getattr(bundle, "text_encoder_2", None) is not None:
            found["text_encoder_2"] = bundle.text_encoder_2
        return found

    def load(self, bundle: Any, path: Path, sha256: str, a1111_hash: str) -> LoadedLora:
        from engine.models.quiet import quiet_libraries as _quiet_libraries

        require_peft()
        adapter = f"lora_{sha256[:16]}"
        models = self.models(bundle)
        xl = bundle.family.text_encoders == 2
        with _quiet_libraries():
            from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

            mixin = StableDiffusionXLLoraLoaderMixin if xl else StableDiffusionLoraLoaderMixin
            try:
                kwargs: dict[str, Any] = {"unet_config": bundle.unet.config} if xl else {}
                state, alphas, metadata = mixin.lora_state_dict(str(path), return_lora_metadata=True, **kwargs)
            except Exception as exc:  # diffusers' conversion errors: unknown layouts and the like
                raise LoraError(f"LoRA {path}: diffusers cannot read it ({_first_line(exc)})") from exc
            if not all("lora" in k for k in state):
                raise LoraError(f"LoRA {path}: not a LoRA (tensor names without 'lora', e.g. {next(iter(state))})")
            state, alphas = fix_text_encoder_names(state, alphas)
            targets = check_fits(path, state, models)
            try:
                mixin.load_lora_into_unet(
                    state, network_alphas=alphas, unet=bundle.unet, adapter_name=adapter, metadata=metadata
                )
                for component in ("text_encoder", "text_encoder_2"):
                    if component in models and component in targets:
                        mixin.load_lora_into_text_encoder(
                            state,
                            network_alphas=alphas,
                            text_encoder=models[component],
                            prefix=component,
                            lora_scale=1.0,
                            adapter_name=adapter,
                            metadata=metadata,
                        )
            except LoraError:
                raise
            except Exception as exc:
                self._forget(bundle, adapter)
                raise LoraError(f"LoRA {path}: cannot load it into this model ({_first_line(exc)})") from exc
        for component, modules in targets.items():
            got = _injected(models[component], adapter)
            if got != len(modules):
                self._forget(bundle, adapter)
                raise LoraError(
                    f"LoRA {path}: {len(modules) - got} of its {len(modules)} {component} layers were not loaded "
                    "(a layout diffusers does not map onto this model)"
                )
        loaded = LoadedLora(path, sha256, a1111_hash, adapter, tuple(sorted(targets)))
        self.loaded[sha256] = loaded
        return loaded

    def _forget(self, bundle: Any, adapter: str) -> None:
        """Remove an adapter from every model that has it (a failed load must leave nothing behind)."""
        for model in self.models(bundle).values():
            config = getattr(model, "peft_config", None) or {}
            if adapter not in config:
                continue
            if hasattr(model, "delete_adapters"):
                model.delete_adapters(adapter)
            else:
                from peft.tuners.tuners_utils import BaseTunerLayer

                for module in model.modules():
                    if isinstance(module, BaseTunerLayer):
                        module.delete_adapter(adapter)
                config.pop(adapter, None)

    def activate(self, bundle: Any, chosen: list[tuple[LoadedLora, float]]) -> None:
        """Make exactly `chosen` active with their weights (diffusers' `set_adapters` per component)."""
        models = self.models(bundle)
        if not any(getattr(model, "peft_config", None) for model in models.values()):
            return  # no LoRA was ever loaded: nothing to switch, and diffusers' LoRA loaders (peft, ~1 s) unimported
        from diffusers.loaders.lora_base import (
            disable_lora_for_text_encoder,
            enable_lora_for_text_encoder,
            set_adapters_for_text_encoder,
        )

        for component, model in models.items():
            if not getattr(model, "peft_config", None):
                continue  # no adapter was ever loaded into this part
            mine = [(lora.adapter, weight) for lora, weight in chosen if component in lora.components]
            text = component != "unet"
            if not mine:
                if text:
                    disable_lora_for_text_encoder(model)
                else:
                    model.disable_lora()
                continue
            names, weights = [n for n, _ in mine], [w for _, w in mine]
            if text:
                enable_lora_for_text_encoder(model)
                set_adapters_for_text_encoder(names, model, weights)
            else:
                model.enable_lora()
                model.set_adapters(names, weights)
        self.active = tuple((lora.sha256, weight) for lora, weight in chosen)

    def evict(self, bundle: Any) -> None:
        active = {sha for sha, _ in self.active}
        while len(self.loaded) > KEEP:
            old = next((sha for sha in self.loaded if sha not in active), None)
            if old is None:
                return
            self._forget(bundle, self.loaded.pop(old).adapter)


def set_loras(bundle: Any, specs: Any) -> tuple[Any, ...]:
    """Activate exactly the LoRAs `specs` (LoraSpec or (path, weight)) on `bundle`; returns LoraSpecs with
    each file's sha256. A spec that already names a sha256 must match the file (a re-run of a recorded run)."""
    from engine.request import LoraSpec

    state: LoraState = bundle.__dict__.setdefault("_lora_state", LoraState())
    chosen: list[tuple[LoadedLora, float]] = []
    resolved = []
    seen: set[str] = set()
    for spec in specs:
        if not isinstance(spec, LoraSpec):
            spec = LoraSpec(str(spec[0]), float(spec[1]))
        path = resolve_lora_path(spec.path)
        check_lora_file(path)
        sha256, a1111_hash = file_hashes(path)
        if spec.sha256 is not None and spec.sha256 != sha256:
            raise LoraError(
                f"LoRA {path}: the file changed since the run recorded it (sha256 {spec.sha256[:12]}..., now "
                f"{sha256[:12]}...); drop its sha256 from the request to use the file as it is"
            )
        if sha256 in seen:
            raise LoraError(f"LoRA {path}: given twice (give it once, with the weight you want)")
        seen.add(sha256)
        loaded = state.loaded.pop(sha256, None) or state.load(bundle, path, sha256, a1111_hash)
        state.loaded[sha256] = loaded  # most recently used last
        chosen.append((loaded, float(spec.weight)))
        resolved.append(LoraSpec(spec.path, float(spec.weight), sha256))
    if chosen or state.active:
        state.activate(bundle, chosen)
    state.evict(bundle)
    return tuple(resolved)


def active_loras(bundle: Any) -> list[dict[str, Any]]:
    """The active LoRAs of a bundle: [{"name", "path", "sha256", "a1111_hash", "weight"}] (history, metadata)."""
    state: LoraState | None = bundle.__dict__.get("_lora_state")
    if state is None:
        return []
    out = []
    for sha, weight in state.active:
        lora = state.loaded[sha]
        out.append(
            {
                "name": lora_name(lora.path),
                "path": str(lora.path),
                "sha256": sha,
                "a1111_hash": lora.a1111_hash,
                "weight": weight,
            }
        )
    return out


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__

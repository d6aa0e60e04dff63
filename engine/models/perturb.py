"""The perturbed pass of PAG, SEG, SLG and autoguidance: diffusers' own hooks on the lab's UNet, for one call.

`perturbed(unet, perturbation)` installs diffusers' hooks (`diffusers.hooks`: `LayerSkipConfig` with the
layer-skip hooks its SkipLayerGuidance / PerturbedAttentionGuidance / AutoGuidance guiders apply, and the
smoothed-energy hook of SmoothedEnergyGuidance) for the duration of a `with` block and removes them after,
as the guiders' `prepare_models` / `cleanup_models` do around their perturbed batch.

Layers are named as the PAG pipelines name them (`pag_applied_layers`): regular expressions searched in the
UNet's self-attention module names ("mid" is every self-attention of the mid block). diffusers' hooks take a
stack of transformer blocks instead (`fqn`, `indices`; `fqn="auto"` raises on a UNet), so each matching
module `<stack>.transformer_blocks.<i>.attn1` becomes `LayerSkipConfig(fqn="<stack>.transformer_blocks",
indices=[i, ...])`. On SDXL's transformer blocks (one self-attention each) the two select the same modules;
`resolve_layers` checks that.

The lab's speed-ups (engine/models/speedups.py) stay in place: a hook wraps the module's current `forward`
(the lean one), and PAG's identity attention works by intercepting `scaled_dot_product_attention`, which
the lean forward calls as diffusers' processor does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from engine.guidance.base import Perturbation
from engine.models.errors import ModelError

PERTURBATION_KINDS = ("attention_scores", "layer_skip", "smoothed_energy")
_HOOK_PREFIX = "tnr_lab_perturbation"


class PerturbationError(ModelError, ValueError):
    """A perturbation does not fit the model (no layer matches); the message is for the user as is (the CLI
    and the run record show it as a model error, one line)."""


def _is_self_attention(module: Any) -> bool:
    from diffusers.models.attention_processor import Attention

    return isinstance(module, Attention) and not module.is_cross_attention


def _fake_integral_match(pattern: str, name: str) -> bool:
    # The PAG pipelines skip a match whose last components are equal numbers ("blocks.1" must not pick a
    # module named "...attentions.1" by its index alone).
    a, b = pattern.split(".")[-1], name.split(".")[-1]
    return a.isnumeric() and b.isnumeric() and a == b


def matching_modules(unet: Any, patterns: tuple[str, ...]) -> list[str]:
    """The self-attention modules the PAG pipelines would perturb for `patterns`, in module order."""
    names: list[str] = []
    for pattern in patterns:
        found = [
            name
            for name, module in unet.named_modules()
            if _is_self_attention(module) and re.search(pattern, name) and not _fake_integral_match(pattern, name)
        ]
        if not found:
            examples = [name for name, module in unet.named_modules() if _is_self_attention(module)][:3]
            raise PerturbationError(
                f"no self-attention layer of this model matches {pattern!r} (layers look like {', '.join(examples)})"
            )
        names += [n for n in found if n not in names]
    return names


def resolve_layers(unet: Any, patterns: tuple[str, ...]) -> dict[str, list[int]]:
    """fqn of each transformer-block stack -> the indices of its blocks whose self-attention matches."""
    stacks: dict[str, list[int]] = {}
    for name in matching_modules(unet, patterns):
        head, sep, tail = name.rpartition(".transformer_blocks.")
        index = tail.split(".", 1)[0]
        if not sep or not index.isdigit():
            raise PerturbationError(f"layer {name} is not inside a stack of transformer blocks")
        fqn = f"{head}.transformer_blocks"
        stacks.setdefault(fqn, [])
        if int(index) not in stacks[fqn]:
            stacks[fqn].append(int(index))
    # The hooks act on every self-attention of the chosen blocks: it must be exactly the matched set.
    chosen = set(matching_modules(unet, patterns))
    hooked = {
        f"{fqn}.{i}.{sub}"
        for fqn, indices in stacks.items()
        for i in indices
        for sub, module in unet.get_submodule(fqn)[i].named_modules()
        if sub and _is_self_attention(module)
    }
    if hooked != chosen:
        extra = ", ".join(sorted(hooked - chosen)[:3])
        raise PerturbationError(f"layers {patterns} select only part of a transformer block (also: {extra})")
    return stacks


@contextmanager
def perturbed(unet: Any, perturbation: Perturbation) -> Iterator[None]:
    """The UNet with the perturbation's hooks installed (and removed on exit, also on an error)."""
    from diffusers.hooks import HookRegistry, LayerSkipConfig
    from diffusers.hooks.layer_skip import _apply_layer_skip_hook
    from diffusers.hooks.smoothed_energy_guidance_utils import (
        SmoothedEnergyGuidanceConfig,
        _apply_smoothed_energy_guidance_hook,
    )

    if perturbation.kind not in PERTURBATION_KINDS:
        raise PerturbationError(f"unknown perturbation {perturbation.kind!r}")
    stacks = resolve_layers(unet, perturbation.layers)
    names = [f"{_HOOK_PREFIX}_{k}" for k in range(len(stacks))]
    registry = HookRegistry.check_if_exists_or_initialize(unet)
    installed: list[str] = []
    try:
        for name, (fqn, indices) in zip(names, stacks.items(), strict=True):
            if perturbation.kind == "smoothed_energy":
                config = SmoothedEnergyGuidanceConfig(indices=list(indices), fqn=fqn)
                _apply_smoothed_energy_guidance_hook(unet, config, perturbation.blur_sigma, name=name)
            else:
                pag = perturbation.kind == "attention_scores"
                config = LayerSkipConfig(
                    indices=list(indices),
                    fqn=fqn,
                    skip_attention=False if pag else perturbation.skip_attention,
                    skip_attention_scores=pag,
                    skip_ff=False if pag else perturbation.skip_ff,
                    dropout=1.0 if pag else perturbation.dropout,
                )
                _apply_layer_skip_hook(unet, config, name=name)
            installed.append(name)
        if math.isclose(perturbation.dropout, 1.0) or perturbation.kind != "layer_skip":
            yield
        else:
            # Dropout below 1 draws masks from torch's global generator: fork it and seed it per pass, so
            # a run is reproducible and leaves the generator as it found it.
            device = next(unet.parameters()).device
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(perturbation.seed)
                yield
    finally:
        for name in installed:
            registry.remove_hook(name, recurse=True)

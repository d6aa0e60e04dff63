"""tnr-lab's sampling engine: plain torch, no UI (see ../shared/design/MATH.md).

Importing `engine` is cheap: torch and diffusers load only when a submodule that needs them is used
(`engine.request` never needs them, so the TUI can validate requests before the heavy libraries load).
"""

from __future__ import annotations

from typing import Any

from engine.request import (
    EMBEDDED_MODEL,
    GUIDANCE_METHODS,
    SOLVERS,
    GenerationRequest,
    RequestError,
    WeightedPrompt,
)

__all__ = [
    "EMBEDDED_MODEL",
    "GUIDANCE_METHODS",
    "SOLVERS",
    "GenerationRequest",
    "RequestError",
    "WeightedPrompt",
    "sample",
    "load_bundle",
]


def __getattr__(name: str) -> Any:
    # Lazy heavy exports.
    if name == "sample":
        from engine.sampler import sample

        return sample
    if name == "load_bundle":
        from engine.models import load_bundle

        return load_bundle
    raise AttributeError(name)

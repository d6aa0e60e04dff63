"""The embedded model's checker as the services use it: per-image verdicts, and whether a model has one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.request import EMBEDDED_MODEL


def check_verdicts(image: Any, prompt: str) -> dict[str, bool | None]:
    """The embedded model's checker on one image: colour, background, shape, all (None where it cannot say)."""
    from engine.toy import check

    try:
        result = check(image, prompt)
    except ValueError:  # a prompt outside the toy grammar: no verdict
        return {"check_colour": None, "check_background": None, "check_shape": None, "check_all": None}
    return {
        "check_colour": bool(result.shape_colour),
        "check_background": bool(result.background),
        "check_shape": bool(result.shape),
        "check_all": bool(result.all),
    }


def is_embedded(model: str, bundle: Any = None) -> bool:
    """Whether the checker applies: the embedded model, by name or by its directory."""
    if model == EMBEDDED_MODEL:
        return True
    if bundle is None:
        return False
    from engine.models.loading import embedded_model_path

    try:
        return Path(bundle.path).resolve() == embedded_model_path().resolve()
    except OSError:
        return False

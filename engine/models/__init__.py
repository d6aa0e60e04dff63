"""Model loading: `load_bundle(ref) -> ModelBundle` over SDXL-topology models (CONTRACTS.md, engine.models)."""

from __future__ import annotations

from engine.models.bundle import Conditioning, ModelBundle, ModelError
from engine.models.loading import embedded_model_path, load_bundle, weights_identity

__all__ = ["Conditioning", "ModelBundle", "ModelError", "embedded_model_path", "load_bundle", "weights_identity"]

"""load_bundle: resolve a model reference, check it, load its parts (ARCHITECTURE.md, "Models").

Families (engine.models.families): SD 1.5, SD 2.x (768-v included) and SDXL, eps- or v-prediction, with or
without zero terminal SNR; the family decides the conditioning, the empty-negative rule and the preview factors.

References:
- "embedded": `$TNR_LAB_EMBEDDED_MODEL`, else `<repo>/data/models/shapes-xl` (trained by `python -m engine.toy.train`).
- a diffusers-format directory (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/, and for
  SDXL text_encoder_2/, tokenizer_2/); loaded with `local_files_only`.
- a single-file `.safetensors` checkpoint in the original layout plus a config directory of the same family
  (diffusers layout, JSON configs and tokenizers; weights not needed): the `config` argument, else
  `$TNR_LAB_MODEL_CONFIG`, else a sibling directory `<stem>/` or `<stem>.config/` or the file's own folder when
  it holds model_index.json. The family comes from the file's keys; an empty `v_pred` tensor marks
  v-prediction and `ztsnr` zero terminal SNR (ComfyUI and A1111 write and read them; diffusers' from_single_file
  ignores both), which override the config directory's scheduler config.
- a hub id ("org/name") when online; with HF_HUB_OFFLINE set only from the local cache.

Only safetensors are read: pickled weights (.ckpt, .bin, .pt, .pth, .pkl) can run arbitrary code when
loaded, so they are refused.

identity: sha256 over, for every weight file in sorted relative-path order, its path, its size, and its first
and last MiB; the first 12 hex digits. Cheap on multi-GB files and changes whenever weights change in practice
(a re-save, a fine-tune, a different dtype); it is a fingerprint, not a proof of integrity.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from engine import collector
from engine.models.bundle import ModelBundle, ModelError
from engine.models.families import Family
from engine.models.quiet import quiet_libraries as _quiet_libraries

REPO_ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_DEFAULT = REPO_ROOT / "data" / "models" / "shapes-xl"
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle")
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2")
# The components of a one-text-encoder family (SD 1.5 / 2.x).
SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SD_WEIGHTED = ("unet", "vae", "text_encoder")
_MIB = 1 << 20


def embedded_model_path() -> Path:
    env = os.environ.get("TNR_LAB_EMBEDDED_MODEL")
    return Path(env).expanduser() if env else EMBEDDED_DEFAULT


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device in ("auto", None, ""):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' asked for, but torch sees no CUDA device")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """UNet and text-encoder dtype: fp16 on accelerators, float32 on CPU, unless asked otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in ("auto", None, ""):
        return torch.float32 if device.type == "cpu" else torch.float16
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise ModelError(f"unknown dtype {dtype!r}: choose one of auto, {', '.join(table)}")
    return table[dtype]


def weights_identity(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: str(p.relative_to(root)) if p.is_relative_to(root) else p.name):
        size = f.stat().st_size
        rel = str(f.relative_to(root)) if f.is_relative_to(root) else f.name
        h.update(f"{rel}\0{size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(_MIB))
            if size > _MIB:
                fh.seek(max(_MIB, size - _MIB))
                h.update(fh.read(_MIB))
    return h.hexdigest()[:12]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _refuse_pickle(path: Path) -> None:
    raise ModelError(
        f"{path}: refusing to load a pickled checkpoint ({path.suffix}): unpickling can run arbitrary code. "
        "Convert it to .safetensors first."
    )


def _check_safetensors(path: Path) -> None:
    """Read the header and check that the data fits the file: catches truncated and non-safetensors files."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from exc
    if not keys:
        raise ModelError(f"{path}: safetensors file holds no tensors")


def _component_weights(path: Path, component: str) -> list[Path]:
    folder = path / component
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = [f for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES]
        if pickles:
            _refuse_pickle(pickles[0])
        raise ModelError(f"{folder}: no .safetensors weights")
    return files


def _variant(folder: Path) -> str | None:
    """ "fp16" when a component folder holds only fp16-variant weights (`*.fp16.safetensors`), else None."""
    files = [f.name for f in folder.glob("*.safetensors")]
    plain = [f for f in files if ".fp16." not in f]
    return "fp16" if files and not plain else None


def _directory_family(path: Path) -> Family:
    """The family of a diffusers directory from its UNet and text encoder configs (families.py)."""
    from engine.models.families import SDXL, FamilyError, family_of_directory

    unet_config = path / "unet" / "config.json"
    te_config = path / "text_encoder" / "config.json"
    if not unet_config.is_file() or not te_config.is_file():
        return SDXL  # the missing parts are named by _check_diffusers_dir
    try:
        return family_of_directory(_read_json(unet_config), _read_json(te_config))
    except FamilyError as exc:
        raise ModelError(f"{path}: {exc}") from exc


def _check_diffusers_dir(path: Path, family: Family) -> list[Path]:
    two = family.text_encoders == 2
    components, weighted = (COMPONENTS, WEIGHTED) if two else (SD_COMPONENTS, SD_WEIGHTED)
    missing = [c for c in components if not (path / c).is_dir()]
    if missing:
        hint = ""
        if not (path / "model_index.json").exists():
            hint = " (not a diffusers-format directory: no model_index.json)"
        raise ModelError(
            f"{path}: missing {', '.join(missing)}{hint}; an {family.label} diffusers directory has "
            f"{', '.join(components)}"
        )
    files = []
    for c in weighted:
        for f in _component_weights(path, c):
            _check_safetensors(f)
            files.append(f)
    return files


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from exc


def _latent_rgb_beside(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`latent_rgb.json` beside the model: {"factors": [[r, g, b] per latent channel], "bias": [r, g, b]}."""
    f = path / "latent_rgb.json" if path.is_dir() else path.with_name("latent_rgb.json")
    if not f.is_file():
        return None
    data = _read_json(f)
    try:
        return torch.tensor(data["factors"], dtype=torch.float32), torch.tensor(data["bias"], dtype=torch.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{f}: expected {{'factors': [[r, g, b], ...], 'bias': [r, g, b]}} ({exc})") from exc


def _tnr_lab_json(path: Path) -> tuple[Path, dict[str, Any]]:
    f = path / "tnr_lab.json" if path.is_dir() else path.with_name("tnr_lab.json")
    if not f.is_file():
        return f, {}
    data = _read_json(f)
    if not isinstance(data, dict):
        raise ModelError(f"{f}: expected a JSON object ({{'default_scales': {{method: scale}}, 'cfg_rescale': phi}})")
    return f, data


def _default_cfg_rescale_beside(path: Path) -> float | None:
    """`tnr_lab.json` beside the model: {"cfg_rescale": phi}, the CFG rescale a request without one gets on
    this model (v-prediction / zero-SNR models are used with about 0.7). None when it does not say."""
    import math

    f, data = _tnr_lab_json(path)
    if "cfg_rescale" not in data:
        return None
    phi = data["cfg_rescale"]
    if isinstance(phi, bool) or not isinstance(phi, (int, float)) or not math.isfinite(phi) or not 0 <= phi <= 1:
        raise ModelError(f"{f}: cfg_rescale must be a number between 0 and 1, got {phi!r}")
    return float(phi)


def _default_scales_beside(path: Path) -> dict[str, float]:
    """`tnr_lab.json` beside the model: {"default_scales": {method: scale}}, the scales a request without one
    gets on this model (the embedded model's come from engine.toy.evaluate). Empty when there is none."""
    import math

    from engine.request import GUIDANCE_METHODS

    f, data = _tnr_lab_json(path)
    scales = data.get("default_scales", {})
    if not isinstance(scales, dict):
        raise ModelError(f"{f}: expected {{'default_scales': {{method: scale}}}}")
    for method, scale in scales.items():
        if method not in GUIDANCE_METHODS:
            raise ModelError(f"{f}: unknown guidance method {method!r} in default_scales")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ModelError(f"{f}: the default scale of {method} must be a finite number, got {scale!r}")
    return {method: float(scale) for method, scale in scales.items()}


def load_bundle(
    ref: str = "embedded",
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    *,
    config: str | Path | None = None,
) -> ModelBundle:
    """Load a model (see the module docstring for the references understood). Raises ModelError.

    The garbage collector is off while it works (diffusers and transformers import, the modules are built):
    ~620 ms of 1.1 s of collections in a tiny model's `generate`. At its end it is on again, whoever turned it
    off for the start (`tnr-lab generate`), unless a caller disabled it itself (engine/collector.py)."""
    collector.hold()
    try:
        return _load_bundle(str(ref), device, dtype, config)
    finally:
        collector.release()


def _load_bundle(
    ref: str, device: str | torch.device, dtype: str | torch.dtype, config: str | Path | None
) -> ModelBundle:
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if dev.type == "cpu":
        from engine.memory import keep_freed_memory

        keep_freed_memory()  # batched calls on the CPU otherwise fault their activations in at every call
    if ref == "embedded":
        path = embedded_model_path()
        if not path.exists():
            raise ModelError(
                f"the embedded model is not there yet ({path}): train it with `python -m engine.toy.train`, "
                "or pass --model DIR"
            )
        return _load_directory(ref, path, dev, dt)
    path = Path(ref).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        _refuse_pickle(path)
    if path.is_dir():
        return _load_directory(ref, path, dev, dt)
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise ModelError(f"{path}: not a .safetensors checkpoint or a diffusers directory")
        return _load_single_file(ref, path, dev, dt, config)
    if _looks_like_hub_id(ref):
        return _load_hub(ref, dev, dt)
    raise ModelError(f"{path}: no such file or directory")


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "/", "~")) and "\\" not in ref


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the hub's host ($HF_ENDPOINT or huggingface.co) accepts a connection within `timeout` seconds.

    Asked before any download: without it an unreachable hub costs ~30 s of retries (huggingface_hub's).
    """
    import socket
    import threading
    from urllib.parse import urlparse

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct connection says nothing; huggingface_hub goes through it
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    answer: list[bool] = []

    def probe() -> None:  # in a thread: the name lookup itself is not bounded by the socket timeout
        try:
            socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return bool(answer and answer[0])


def _load_hub(ref: str, dev: torch.device, dt: torch.dtype) -> ModelBundle:
    from huggingface_hub import HfApi, snapshot_download

    offline_env = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    offline = offline_env or not hub_reachable()
    try:
        # Only the component folders' configs, tokenizers and safetensors (never the root single-file
        # checkpoints or pickled weights that some repositories also carry), and of the weights only one
        # copy: the full-precision files where the repository has them, else its fp16 variant.
        patterns = ["model_index.json", "tnr_lab.json", "latent_rgb.json"]
        patterns += [f"{c}/*.{ext}" for c in COMPONENTS for ext in ("json", "txt")]
        if offline:
            patterns += [f"{c}/*.safetensors" for c in WEIGHTED]
        else:
            files = HfApi().list_repo_files(ref)
            for c in WEIGHTED:
                weights = [f for f in files if f.startswith(c + "/") and f.endswith(".safetensors")]
                plain = [f for f in weights if ".fp16." not in f]
                patterns += plain or weights
        local = snapshot_download(ref, local_files_only=offline, allow_patterns=patterns)
    except Exception as exc:  # network, missing repo, offline without a cache
        if offline_env:
            why = "HF_HUB_OFFLINE is set and it is not in the local cache"
        elif offline:
            why = "the hub cannot be reached from here and it is not in the local cache"
        else:
            why = _first_line(exc)
        raise ModelError(
            f"{ref}: no such local directory or file, and cannot get the model from the hub ({why})"
        ) from exc
    return _load_directory(ref, Path(local), dev, dt)


def _model_classes() -> tuple[Any, Any, Any, Any]:
    """diffusers' UNet2DConditionModel and transformers' CLIPTextModel, CLIPTextModelWithProjection and
    CLIPTokenizer, imported without running the package __init__ files that gather every other model of the
    two libraries (engine.models.imports: the same classes, about a quarter less import time)."""
    from engine.models.imports import import_deferring

    def load() -> tuple[Any, Any, Any, Any]:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        return UNet2DConditionModel, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    return import_deferring(load)


def _load_directory(ref: str, path: Path, dev: torch.device, dt: torch.dtype) -> ModelBundle:
    family = _directory_family(path)
    files = _check_diffusers_dir(path, family)
    scheduler_config = _read_json(path / "scheduler" / "scheduler_config.json")
    index = _read_json(path / "model_index.json") if (path / "model_index.json").exists() else {}
    two = family.text_encoders == 2
    try:
        with _quiet_libraries():
            from engine.decoder import load_sdxl_decoder

            UNet2DConditionModel, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer = _model_classes()

            unet = UNet2DConditionModel.from_pretrained(
                path,
                subfolder="unet",
                torch_dtype=dt,
                use_safetensors=True,
                local_files_only=True,
                variant=_variant(path / "unet"),
            )
            text_encoder = CLIPTextModel.from_pretrained(
                path / "text_encoder", dtype=dt, local_files_only=True, variant=_variant(path / "text_encoder")
            )
            tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
            text_encoder_2 = tokenizer_2 = None
            if two:
                text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
                    path / "text_encoder_2",
                    dtype=dt,
                    local_files_only=True,
                    variant=_variant(path / "text_encoder_2"),
                )
                tokenizer_2 = CLIPTokenizer.from_pretrained(path / "tokenizer_2", local_files_only=True)
            decoder = load_sdxl_decoder(path / "vae", dev)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path}: cannot load the model ({_first_line(exc)})") from exc
    _check_topology(path, family, unet, text_encoder, text_encoder_2)
    return ModelBundle(
        ref=ref,
        path=path,
        name=path.name,
        identity=weights_identity(files, path),
        device=dev,
        dtype=dt,
        unet=unet.to(dev).eval(),
        text_encoder=text_encoder.to(dev).eval(),
        text_encoder_2=text_encoder_2.to(dev).eval() if text_encoder_2 is not None else None,
        tokenizer=_fix_max_length(tokenizer),
        tokenizer_2=_fix_max_length(tokenizer_2) if tokenizer_2 is not None else None,
        decoder=decoder,
        scheduler_config=scheduler_config,
        force_zeros_for_empty_prompt=_force_zeros(family, index),
        latent_rgb=_latent_rgb_beside(path),
        default_scales=_default_scales_beside(path),
        family=family,
        default_cfg_rescale=_default_cfg_rescale_beside(path),
    )


def _force_zeros(family: Family, index: dict[str, Any]) -> bool:
    """Whether an empty negative prompt is zero conditioning: SDXL's pipeline does it unless its model index
    says `force_zeros_for_empty_prompt: false`; SD 1.5/2.x's pipeline has no such option and encodes ""."""
    if not family.zeros_for_empty_negative:
        return False
    return bool(index.get("force_zeros_for_empty_prompt", True))


def _fix_max_length(tokenizer: Any) -> Any:
    # PITFALLS.md: a tokenizer without model_max_length pads to 1e30; CLIP's context is 77 tokens.
    if tokenizer.model_max_length > 10_000:
        tokenizer.model_max_length = 77
    return tokenizer


def _check_topology(path: Path, family: Family, unet: Any, te1: Any, te2: Any) -> None:
    cfg = unet.config
    if family.added_conditioning and cfg.addition_embed_type != "text_time":
        raise ModelError(
            f"{path}: the UNet has no SDXL 'text_time' conditioning (addition_embed_type {cfg.addition_embed_type!r})"
        )
    widths = [te.config.hidden_size for te in (te1, te2) if te is not None]
    if cfg.cross_attention_dim != sum(widths):
        raise ModelError(
            f"{path}: UNet cross_attention_dim {cfg.cross_attention_dim} != text encoder width"
            f"{'s' if len(widths) > 1 else ''} {' + '.join(str(w) for w in widths)} ({family.label})"
        )


def _single_file_config_dir(path: Path, config: str | Path | None, family: Family) -> Path:
    candidates = []
    if config is not None:
        candidates.append(Path(config).expanduser())
    elif os.environ.get("TNR_LAB_MODEL_CONFIG"):
        candidates.append(Path(os.environ["TNR_LAB_MODEL_CONFIG"]).expanduser())
    else:
        candidates += [path.with_suffix(""), path.with_name(path.stem + ".config"), path.parent]
    for c in candidates:
        if (c / "model_index.json").is_file() and (c / "unet" / "config.json").is_file():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise ModelError(
        f"{path}: a single-file checkpoint needs a config directory of an {family.label} model "
        f"(diffusers layout: model_index.json, unet/config.json, vae/, text encoders' configs, tokenizers); none "
        f"found at {tried}"
    )


def single_file_header(path: Path) -> tuple[set[str], dict[str, tuple[int, ...]]]:
    """The tensor names and shapes of a safetensors file (header only), or ModelError naming the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from exc
    if not keys:
        raise ModelError(f"{path}: safetensors file holds no tensors")
    return set(keys), shapes


def single_file_family(path: Path) -> tuple[Family, bool, bool]:
    """(family, v_pred marker, ztsnr marker) of a single-file checkpoint, or ModelError in one line."""
    from engine.models.families import FamilyError, family_of_keys

    keys, shapes = single_file_header(path)
    try:
        family = family_of_keys(keys, shapes)
    except FamilyError as exc:
        raise ModelError(f"{path}: not an SD 1.5, SD 2.x or SDXL checkpoint: {exc}") from exc
    return family, "v_pred" in keys, "ztsnr" in keys


def apply_markers(
    scheduler_config: dict[str, Any], v_pred: bool, ztsnr: bool
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A config directory's scheduler config with a single file's markers applied, and notes saying so.

    `v_pred` -> prediction_type v_prediction; `ztsnr` -> rescale_betas_zero_snr with trailing spacing (zero
    terminal SNR is sampled from the last timestep, Lin et al. 2023), as ComfyUI and A1111 read them.
    """
    config, notes = dict(scheduler_config), []
    if v_pred and config.get("prediction_type") != "v_prediction":
        config["prediction_type"] = "v_prediction"
        notes.append("the checkpoint's 'v_pred' key: v-prediction (the config directory says epsilon)")
    if ztsnr and not config.get("rescale_betas_zero_snr"):
        config["rescale_betas_zero_snr"] = True
        config["timestep_spacing"] = "trailing"
        notes.append("the checkpoint's 'ztsnr' key: zero terminal SNR, trailing spacing")
    return config, tuple(notes)


def _load_single_file(
    ref: str, path: Path, dev: torch.device, dt: torch.dtype, config: str | Path | None
) -> ModelBundle:
    family, v_pred, ztsnr = single_file_family(path)
    config_dir = _single_file_config_dir(path, config, family)
    config_family = _directory_family(config_dir)
    if config_family is not family:
        raise ModelError(
            f"{path}: the checkpoint is {family.label}, but its config directory {config_dir} is an "
            f"{config_family.label} model's; give one of the same family (TNR_LAB_MODEL_CONFIG=DIR, or a folder named after the file beside it)"
        )
    two = family.text_encoders == 2
    try:
        with _quiet_libraries():
            from engine.decoder import SDXLDecoder
            from engine.models.imports import import_deferring

            # The family's pipeline module and what from_single_file needs, without the packages that gather
            # every other model (engine.models.imports).
            pipeline_class = import_deferring(
                lambda: getattr(importlib.import_module("diffusers"), family.pipeline_class)
            )
            extra: dict[str, Any] = {} if two else {"safety_checker": None, "requires_safety_checker": False}
            pipe = pipeline_class.from_single_file(
                str(path), config=str(config_dir), local_files_only=True, torch_dtype=torch.float32, **extra
            )
            decoder = SDXLDecoder(dict(pipe.vae.config))
            decoder.load_decoder_state(pipe.vae.state_dict())
            text_encoder_2 = pipe.text_encoder_2 if two else None
            _check_topology(path, family, pipe.unet, pipe.text_encoder, text_encoder_2)
            # Cast inside the quiet block: diffusers warns about casting with `to()` (nothing to keep in float32).
            unet = pipe.unet.to(dev, dt).eval()
            text_encoder = pipe.text_encoder.to(dev, dt).eval()
            if text_encoder_2 is not None:
                text_encoder_2 = text_encoder_2.to(dev, dt).eval()
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path}: cannot load the {family.label} checkpoint ({_first_line(exc)})") from exc
    scheduler_config, notes = apply_markers(
        _read_json(config_dir / "scheduler" / "scheduler_config.json"), v_pred, ztsnr
    )
    index = _read_json(config_dir / "model_index.json")
    return ModelBundle(
        ref=ref,
        path=path,
        name=path.stem,
        identity=weights_identity([path], path.parent),
        device=dev,
        dtype=dt,
        unet=unet,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=_fix_max_length(pipe.tokenizer),
        tokenizer_2=_fix_max_length(pipe.tokenizer_2) if two else None,
        decoder=decoder.to(dev).eval(),
        scheduler_config=scheduler_config,
        force_zeros_for_empty_prompt=_force_zeros(family, index),
        latent_rgb=_latent_rgb_beside(path),
        default_scales=_default_scales_beside(path),
        family=family,
        default_cfg_rescale=_default_cfg_rescale_beside(path),
        notes=notes,
    )

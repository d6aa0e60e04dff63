"""LoRA files without torch: `PATH[:WEIGHT]` arguments, A1111 names, the folders a name is looked up in, and
the hashes the history and the PNG metadata record (engine.models.lora loads them into a model).

Torch-free at import: the CLI parses `--lora` and the PNG reader resolves `<lora:name:weight>` with it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle")
LORA_DIRS_ENV = "TNR_LAB_LORA_DIRS"  # folders searched for a LoRA given by name (os.pathsep-separated)
_HASHES: dict[tuple[str, int, int], tuple[str, str]] = {}


def parse_lora_arg(text: str) -> tuple[str, float]:
    """`PATH[:WEIGHT]` -> (path, weight); the weight defaults to 1."""
    head, sep, tail = text.rpartition(":")
    if sep and head and re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", tail):
        return head, float(tail)
    return text, 1.0  # no number after the last ':': all of it is the path


def lora_name(path: str | Path) -> str:
    """A1111's name of a LoRA: the file name without its extension."""
    name = Path(str(path)).name
    return name[: -len(".safetensors")] if name.lower().endswith(".safetensors") else name


def lora_dirs() -> list[Path]:
    return [Path(p).expanduser() for p in os.environ.get(LORA_DIRS_ENV, "").split(os.pathsep) if p.strip()]


def resolve_lora_path(path: str | Path) -> Path:
    """The LoRA file a request names: the path itself, else NAME or NAME.safetensors in $TNR_LAB_LORA_DIRS."""
    given = Path(str(path)).expanduser()
    if given.exists() or given.is_absolute() or len(given.parts) > 1:
        return given
    for folder in lora_dirs():
        for candidate in (folder / given.name, folder / f"{given.name}.safetensors"):
            if candidate.is_file():
                return candidate
    return given


def file_hashes(path: Path) -> tuple[str, str]:
    """(sha256 of the whole file, A1111's 12-digit hash of its tensor data); cached by path, size and mtime."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        whole, data = hashlib.sha256(), hashlib.sha256()
        with open(path, "rb") as f:
            head = f.read(8)
            whole.update(head)
            header_len = int.from_bytes(head, "little") if len(head) == 8 else 0
            header = f.read(header_len)
            whole.update(header)
            while chunk := f.read(1 << 20):
                whole.update(chunk)
                data.update(chunk)
        _HASHES[key] = (whole.hexdigest(), data.hexdigest()[:12])
    return _HASHES[key]


def parse_lora_list(text: str) -> list[tuple[str, float]]:
    """A text field's LoRAs (the TUI's Model panel): `PATH[:WEIGHT]` entries separated by ';' or new lines
    (not commas, which file names may hold); blank entries are skipped. The request validates the rest."""
    return [parse_lora_arg(item.strip()) for item in re.split(r"[;\n]", text) if item.strip()]

"""Command lines the CLI tests share."""

from __future__ import annotations

from pathlib import Path


def generate_argv(home: Path, out: Path, *extra: str, model: Path | None = None) -> list[str]:
    """`tnr-lab --data-dir HOME generate` of one 64x64 step of "a red circle" to OUT (on MODEL if given), then
    `extra`."""
    return [
        "--data-dir",
        str(home),
        "generate",
        *(["--model", str(model)] if model is not None else []),
        "--prompt",
        "a red circle",
        "--steps",
        "1",
        "--width",
        "64",
        "--height",
        "64",
        "--out",
        str(out),
        *extra,
    ]

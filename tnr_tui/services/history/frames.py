"""A run's trajectory frames as the history keeps them (GenerationRequest.keep_frames).

Two files beside the run's image, each an animated PNG (APNG: one file, every frame exact, viewable as an
animation in a browser), recorded as outputs like the image (so `delete` removes them, exports carry them):

- `outputs/<day>/<run id>.frames.png` (kind `frames`): the cheap latent-to-RGB preview of the denoised
  estimate D at every step (MATH.md 6), one pixel per latent pixel;
- `outputs/<day>/<run id>.decoded.png` (kind `decoded_frames`): the decoder's image of D every
  `decode_every` steps (and the final image at the last step), at full size.

Which step each frame shows is kept in the file (text chunk `tnr-lab-frames`: {"steps": [...]}) and in the
run's stats (`stats["frames"]`: {"frames": [...], "decoded_frames": [...]}), so a reader needs no file to
know the steps. PIL merges identical consecutive APNG frames that share their blend op, which would lose
the frame-to-step mapping late in a run; the frames alternate blend ops (the same pixels: every frame is
opaque) and the writer checks the count it reads back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FRAME_KINDS: tuple[str, ...] = ("frames", "decoded_frames")
FRAME_SUFFIX: dict[str, str] = {"frames": ".frames.png", "decoded_frames": ".decoded.png"}
TEXT_KEY = "tnr-lab-frames"
FRAME_MS = 125  # the animation's pace (8 frames a second)


class FramesError(ValueError):
    """A frames file cannot be read as one (missing, damaged, not an APNG of this lab); one line."""


def write_frames(images: Sequence[Any], steps: Sequence[int], path: Path) -> Path:
    """Write PIL images (one per entry of `steps`) as one APNG, atomically (temporary name, then rename)."""
    from PIL import Image, PngImagePlugin

    if not images or len(images) != len(steps):
        raise ValueError("write_frames needs one step index per image, and at least one image")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frames = [im.convert("RGB") for im in images]
    info = PngImagePlugin.PngInfo()
    info.add_text(TEXT_KEY, json.dumps({"steps": [int(s) for s in steps]}))
    try:
        for paced in (True, False):
            options: dict[str, Any] = {"pnginfo": info, "loop": 0}
            if len(frames) > 1:
                options.update(save_all=True, append_images=frames[1:])
                if paced:
                    options.update(duration=FRAME_MS, blend=[k % 2 for k in range(len(frames))])
            frames[0].save(tmp, format="PNG", **options)
            with Image.open(tmp) as check:
                if getattr(check, "n_frames", 1) == len(frames):
                    break
        else:  # unreachable unless PIL changes how it writes APNGs
            raise OSError(f"{path}: the APNG writer kept fewer frames than it was given")
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    finally:
        tmp.unlink(missing_ok=True)
    return path


def frame_steps(path: Path) -> list[int]:
    """The step of each frame, from the file's text chunk."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            text = im.info.get(TEXT_KEY)
    except (OSError, ValueError) as e:
        raise FramesError(f"{path}: not a readable frames file ({e})") from None
    return _parse_steps(text, path)


def _parse_steps(text: Any, path: Path) -> list[int]:
    try:
        steps = json.loads(text)["steps"]
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
            raise TypeError
        return list(steps)
    except (TypeError, ValueError, KeyError):
        raise FramesError(f"{path}: no tnr-lab frame index in it") from None


def read_frames(path: Path, max_pixels: int = 256 * 1024 * 1024) -> tuple[list[int], list[Any]]:
    """(steps, images): every frame of a frames file, decoded (RGB PIL images), and the step of each.

    `max_pixels` bounds the frames' total pixels (a damaged or hostile file must not fill memory)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            steps = _parse_steps(im.info.get(TEXT_KEY), path)
            count = getattr(im, "n_frames", 1)
            if count != len(steps):
                raise FramesError(f"{path}: holds {count} frames for {len(steps)} steps")
            if im.width * im.height * count > max_pixels:
                raise FramesError(f"{path}: {count} frames of {im.width}x{im.height} is more than it may hold")
            images = []
            for k in range(count):
                im.seek(k)
                images.append(im.convert("RGB"))
    except FramesError:
        raise
    except (OSError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise FramesError(f"{path}: not a readable frames file ({e})") from None
    return steps, images


@dataclass(frozen=True)
class RunFrames:
    """A run's kept frames (`Store.run_frames`): for each kind it has, the file and the step of each frame."""

    run_id: str
    paths: dict[str, Path] = field(default_factory=dict)  # kind -> file
    steps: dict[str, list[int]] = field(default_factory=dict)  # kind -> step index of each frame

    def __bool__(self) -> bool:
        return bool(self.paths)

    def load(self, kind: str = "frames") -> list[Any]:
        """The frames of one kind as RGB PIL images (FramesError when the file is gone or damaged)."""
        if kind not in self.paths:
            raise FramesError(f"run {self.run_id} kept no {kind.replace('_', ' ')}")
        path = self.paths[kind]
        if not path.is_file():
            raise FramesError(f"run {self.run_id}: its {kind.replace('_', ' ')} file {path} is missing")
        return read_frames(path)[1]

    def frame_at(self, step: int, kind: str = "frames") -> int | None:
        """The index of the frame that shows `step` (the latest one at or before it), None before the first."""
        best = None
        for k, s in enumerate(self.steps.get(kind, [])):
            if s <= step:
                best = k
        return best

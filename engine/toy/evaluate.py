"""Prompt accuracy of a toy model, per guidance method and scale, through the lab's real sampling path.

    python -m engine.toy.evaluate --n 240 --out docs/embedded-model-eval.md

Each method's scale is chosen on a separate set of search pairs (other seeds), then measured on the `n` fixed
evaluation pairs, so the reported accuracy is not fitted to the pairs it is measured on. An image counts as
right when the checker finds the shape's colour, the background and the shape all right.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.toy.check import check
from engine.toy.data import Scene, all_scenes

# Settings tried per method: the guidance scale, or for single-prediction TNR (which has no scale) the exponent
# p of its factor S = 2 - abar**p. cfg's list also gives the accuracy-vs-scale curve.
SEARCH_SETTINGS: dict[str, list[dict[str, float]]] = {
    "none": [{}],
    "cfg": [{"scale": g} for g in (1.5, 3.0, 4.5, 6.0, 8.0)],
    "tnr": [{"tnr_power": p} for p in (0.25, 0.5, 1.0, 2.0, 4.0)],
    "tnr-cfg": [{"scale": g} for g in (1.5, 3.0, 4.5, 6.0)],
    "cfg++": [{"scale": g} for g in (0.2, 0.4, 0.6, 0.8)],  # the CFG++ paper keeps lambda in [0, 1]
}
EVALUATION_SEED = 20_000
SEARCH_SEED = 90_000


@dataclass
class Cell:
    method: str
    setting: dict[str, float]
    images: int
    correct: int
    shape_colour: int
    background: int
    shape: int
    evaluations_per_image: float
    seconds_per_image: float

    @property
    def accuracy(self) -> float:
        return self.correct / max(1, self.images)


def prompt_seed_pairs(n: int, base_seed: int) -> list[tuple[Scene, int]]:
    """`n` fixed (scene, seed) pairs: scenes in a seeded shuffled cycle over all 168, seeds base, base+1, ..."""
    scenes = all_scenes()
    rng = np.random.default_rng(base_seed)
    order = np.concatenate([rng.permutation(len(scenes)) for _ in range(n // len(scenes) + 1)])[:n]
    return [(scenes[int(i)], base_seed + k) for k, i in enumerate(order)]


def run_cell(
    bundle, method: str, setting: dict[str, float], pairs: list[tuple[Scene, int]], steps: int, keep=None
) -> Cell:
    from engine.request import GenerationRequest
    from engine.sampler import sample

    cell = Cell(method, setting, 0, 0, 0, 0, 0, 0.0, 0.0)
    evaluations = 0
    started = time.perf_counter()
    for scene, seed in pairs:
        request = GenerationRequest(
            prompt=scene.prompt, seed=seed, steps=steps, guidance=method, preview_every=0, **setting
        )
        result = sample(bundle, request)
        verdict = check(result.image, scene.prompt)
        cell.images += 1
        cell.correct += verdict.all
        cell.shape_colour += verdict.shape_colour
        cell.background += verdict.background
        cell.shape += verdict.shape
        evaluations += int(result.stats["model_evaluations"])
        if keep is not None:
            keep(scene, seed, result.image, verdict)
    cell.evaluations_per_image = evaluations / max(1, cell.images)
    cell.seconds_per_image = (time.perf_counter() - started) / max(1, cell.images)
    return cell


def _setting_text(setting: dict[str, float]) -> str:
    if not setting:
        return "-"
    return ", ".join(f"{'p' if k == 'tnr_power' else k} {v:g}" for k, v in setting.items())


def markdown_table(cells: list[Cell]) -> str:
    lines = [
        "| method | setting | all three right | shape colour | background | shape | model evaluations / image | s / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        n = max(1, c.images)
        lines.append(
            f"| {c.method} | {_setting_text(c.setting)} | **{100 * c.accuracy:.1f} %** ({c.correct}/{c.images}) | "
            f"{100 * c.shape_colour / n:.1f} % | {100 * c.background / n:.1f} % | {100 * c.shape / n:.1f} % | "
            f"{c.evaluations_per_image:.0f} | {c.seconds_per_image:.2f} |"
        )
    return "\n".join(lines)


def evaluate(
    model: str, n: int, search_n: int, steps: int, methods: list[str], sheet: Path | None, threads: int = 1
) -> tuple[list[Cell], list[Cell]]:
    """(search cells for every scale tried, final cells at each method's best scale on the `n` pairs)."""
    import torch

    from engine.models import load_bundle

    torch.set_num_threads(threads)
    bundle = load_bundle(model, device="cpu")
    search_pairs = prompt_seed_pairs(search_n, SEARCH_SEED)
    pairs = prompt_seed_pairs(n, EVALUATION_SEED)
    search: list[Cell] = []
    final: list[Cell] = []
    sheet_images: list[tuple[str, object]] = []
    for method in methods:
        candidates = SEARCH_SETTINGS[method]
        best = candidates[0]
        if len(candidates) > 1:
            tried = []
            for setting in candidates:
                cell = run_cell(bundle, method, setting, search_pairs, steps)
                tried.append(cell)
                print(f"search {method} {_setting_text(setting)}: {100 * cell.accuracy:.1f} %", file=sys.stderr)
            search.extend(tried)
            best = max(tried, key=lambda c: c.accuracy).setting

        def keep(scene, seed, image, verdict, method=method):
            if len(sheet_images) < 12 * (len(final) + 1):
                sheet_images.append((method, image))

        cell = run_cell(bundle, method, best, pairs, steps, keep=keep if sheet else None)
        final.append(cell)
        print(f"final {method} {_setting_text(best)}: {100 * cell.accuracy:.1f} % over {n}", file=sys.stderr)
    if sheet is not None and sheet_images:
        write_sheet(sheet, [image for _, image in sheet_images], columns=12)
    return search, final


def write_sheet(path: Path, images: list, columns: int) -> None:
    from PIL import Image

    width, height = images[0].size
    rows = (len(images) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * width, rows * height), (128, 128, 128))
    for k, image in enumerate(images):
        canvas.paste(image, ((k % columns) * width, (k // columns) * height))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.toy.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--n", type=int, default=240, help="evaluation prompt/seed pairs")
    parser.add_argument("--search-n", type=int, default=60, help="pairs (other seeds) used to pick each scale")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--methods", default="cfg,none,tnr,tnr-cfg,cfg++")
    parser.add_argument("--out", type=Path, default=None, help="markdown table to write (json beside it)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    parser.add_argument("--sheet", type=Path, default=None, help="PNG contact sheet of the first images per method")
    parser.add_argument(
        "--write-defaults",
        type=Path,
        default=None,
        help="merge each searched method's best scale into this tnr_lab.json (the model's default scales)",
    )
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in SEARCH_SETTINGS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(SEARCH_SETTINGS)}")
    if args.n < 1 or args.search_n < 1 or args.steps < 1:
        parser.error("--n, --search-n and --steps must be positive")
    try:
        search, final = evaluate(args.model, args.n, args.search_n, args.steps, methods, args.sheet, args.threads)
    except Exception as exc:  # a missing or broken model: one line, no traceback
        from engine.models import ModelError

        if isinstance(exc, ModelError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    text = (
        f"Scale search on {args.search_n} pairs (seeds from {SEARCH_SEED}):\n\n{markdown_table(search)}\n\n"
        f"At each method's best scale, {args.n} pairs (seeds from {EVALUATION_SEED}), {args.steps} Euler steps:\n\n"
        f"{markdown_table(final)}\n"
    )
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        payload = {"search": [c.__dict__ for c in search], "final": [c.__dict__ for c in final]}
        args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    if args.write_defaults is not None:
        write_default_scales(args.write_defaults, final)
    return 0


def write_default_scales(path: Path, final: list[Cell]) -> dict:
    """Merge the best scale of each method that has one into `path` ({"default_scales": {method: scale}}),
    keeping the other methods' entries (evaluations can run in several processes)."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    scales = dict(data.get("default_scales", {}))
    scales.update({c.method: float(c.setting["scale"]) for c in final if "scale" in c.setting})
    data["default_scales"] = dict(sorted(scales.items()))
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data


if __name__ == "__main__":
    raise SystemExit(main())

"""Contact sheets: one labelled PNG per prompt, rows method/scale/solver, columns seeds (PIL only)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from tnr_tui.services.cells import GridCell, cell_of_request  # noqa: F401  (GridCell: the cells of a plan)
from tnr_tui.services.sweep.spec import SweepSpec, row_label

# ---- contact sheets -------------------------------------------------------------------------------------------

THUMB = 128
PAD = 4


def slug(text: str, limit: int = 48) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (s[:limit].rstrip("-") or "prompt") + "-" + hashlib.sha1(text.encode()).hexdigest()[:6]


def write_contact_sheets(
    spec: SweepSpec, cells: list[GridCell], rows: dict[str, dict[str, Any]], out_dir: Path
) -> list[Path]:
    """One PNG per prompt: rows method/scale/solver, columns seeds, each row labelled at its left."""
    sheets = []
    for prompt in spec.prompts:
        mine = [c for c in cells if c.prompt == prompt]
        labels = list(dict.fromkeys(row_label(c) for c in mine))
        grid: dict[tuple[str, int], Path] = {}
        for c in mine:
            row = rows.get(c.key)
            if row and row.get("image"):
                grid[(row_label(c), c.seed)] = Path(row["image"])
        path = out_dir / f"sheet-{slug(prompt)}.png"
        draw_sheet(prompt, labels, list(spec.seeds), grid, path)
        sheets.append(path)
    return sheets


def draw_sheet(
    title: str,
    row_labels: list[str],
    seeds: list[int],
    images: dict[tuple[str, int], Any],
    path: Path,
    column_headers: dict[int, str] | None = None,
) -> None:
    """Rows labelled at the left, one column per seed (header `seed N`, or `column_headers[seed]`, which may
    hold a line break); `images` maps (row label, seed) to a PNG path or a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([probe.textlength(lbl, font=font) for lbl in row_labels] + [60]) + 2 * PAD
    headers = {seed: (column_headers or {}).get(seed, f"seed {seed}") for seed in seeds}
    header_lines = max([h.count("\n") + 1 for h in headers.values()] + [1])
    header_h = 26 + 16 * header_lines
    width = int(label_w) + len(seeds) * (THUMB + PAD) + PAD
    height = header_h + len(row_labels) * (THUMB + PAD) + PAD
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, PAD), title, fill=(0, 0, 0), font=font)
    for j, seed in enumerate(seeds):
        x = int(label_w) + j * (THUMB + PAD)
        draw.multiline_text((x + 2, 22), headers[seed], fill=(60, 60, 60), font=font, spacing=3)
    for i, label in enumerate(row_labels):
        y = header_h + i * (THUMB + PAD)
        draw.text((PAD, y + THUMB // 2 - 7), label, fill=(0, 0, 0), font=font)
        for j, seed in enumerate(seeds):
            x = int(label_w) + j * (THUMB + PAD)
            src = images.get((label, seed))
            gap = "missing"
            if isinstance(src, Path):
                try:
                    with Image.open(src) as im:
                        src = im.convert("RGB")
                except FileNotFoundError:
                    src = None
                except (OSError, ValueError, Image.DecompressionBombError):
                    # Not an image any more (truncated, replaced): a gap in the sheet, not a traceback after
                    # every cell was sampled and recorded.
                    src, gap = None, "unreadable"
            if src is None:
                draw.rectangle((x, y, x + THUMB - 1, y + THUMB - 1), outline=(200, 200, 200))
                draw.text((x + 8, y + THUMB // 2 - 7), gap, fill=(160, 160, 160), font=font)
                continue
            sheet.paste(thumbnail(src), (x, y))
    tmp = path.with_name(path.name + ".tmp.png")
    try:
        sheet.save(tmp)
        os.replace(tmp, path)
    finally:  # SIGTERM or ctrl-c while saving: no half-written temp file left beside the sheets
        tmp.unlink(missing_ok=True)


def thumbnail(image: Any) -> Any:
    """At most THUMB pixels a side: small images grow by a whole factor with nearest (pixels stay honest),
    large ones shrink smoothly."""
    from PIL import Image

    thumb = image.convert("RGB")
    if max(thumb.size) > THUMB:
        thumb.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    elif max(thumb.size) < THUMB:
        factor = THUMB // max(thumb.size)
        thumb = thumb.resize((thumb.width * factor, thumb.height * factor), Image.Resampling.NEAREST)
    return thumb

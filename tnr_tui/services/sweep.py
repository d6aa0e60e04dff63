"""Sweeps: a grid of runs over prompts x guidance methods x scales x solvers x seeds, recorded in the history.

Every cell is an ordinary history run (made by `tnr_tui.services.runs.execute`) tagged `{"sweep": <id>}`. A sweep writes
into its output directory a CSV of one row per image (parameters, evaluations, metrics, the checker's verdicts
on the embedded model) and one labelled contact sheet PNG per prompt. Cells already done (in the CSV or in the
history under the same sweep id) are skipped, so an interrupted sweep resumes where it stopped.

Model evaluations (`--match-evaluations`): a step of a solver with k stages under a method with P predictions
costs k * P UNet evaluations, except the last step (to sigma 0), which every solver takes with Euler (MATH.md 4),
so n steps cost `P * (k * (n - 1) + 1)`. The reference budget is `--steps` of Euler with one prediction
(`budget = steps`); each solver/method gets the step count whose cost is nearest to the budget (ties: the fewer
steps, so no cell spends more than its tie partner). The CSV reports the evaluations actually spent.

No torch here at import time: the planning half is pure Python; execution imports the engine lazily.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.request import (
    DEFAULT_SCALE,
    EMBEDDED_MODEL,
    GUIDANCE_METHODS,
    SOLVERS,
    GenerationRequest,
)
from engine.evaluations import planned_evaluations, steps_for_budget
from engine.units import GUIDANCE

# Methods whose scale means something; the others run once, with no scale.
SCALED_METHODS: tuple[str, ...] = tuple(u.name for u in GUIDANCE if u.uses_scale)
MAX_SEEDS = 10_000


class SweepError(ValueError):
    """Bad sweep arguments or a sweep that cannot continue; the message is meant for the user."""


# ---- model evaluations --------------------------------------------------------------------------------------


def evaluations(solver: str, guidance: str, steps: int) -> int:
    """Model evaluations of one image (engine.evaluations, the one count; the final step to sigma 0 is first order)."""
    if steps < 1:
        raise SweepError(f"steps must be at least 1, got {steps}")
    return planned_evaluations(GenerationRequest(prompt="", solver=solver, guidance=guidance, steps=steps))


def reference_budget(steps: int) -> int:
    """The evaluation budget of `steps` Euler steps with one prediction per step (none or tnr)."""
    return evaluations("euler", "none", steps)


def matched_steps(solver: str, guidance: str, budget: int) -> int:
    """The step count whose evaluations are nearest `budget` (ties: fewer steps); at least 1 step."""
    return steps_for_budget(GenerationRequest(prompt="", solver=solver, guidance=guidance, steps=1), budget)


# ---- argument parsing ---------------------------------------------------------------------------------------


def parse_list(text: str, choices: Sequence[str], what: str) -> tuple[str, ...]:
    """'a,b,c' -> ('a', 'b', 'c'), each checked against `choices`, duplicates dropped, order kept."""
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not items:
        raise SweepError(f"no {what} given")
    for item in items:
        if item not in choices:
            raise SweepError(f"unknown {what} {item!r}; choose from: {', '.join(choices)}")
    return tuple(dict.fromkeys(items))


def parse_seeds(text: str) -> tuple[int, ...]:
    """'1-4,9,12-13' -> (1, 2, 3, 4, 9, 12, 13)."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if m is None:
            raise SweepError(f"seeds: cannot read {part!r}; write e.g. 1-16 or 1,2,5-8")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise SweepError(f"seeds: the range {part!r} runs backwards")
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:
            raise SweepError(f"seeds: more than {MAX_SEEDS} seeds; is {part!r} a typo?")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise SweepError("no seeds given")
    return tuple(dict.fromkeys(seeds))


def parse_scales(items: Iterable[str]) -> dict[str, tuple[float, ...]]:
    """['cfg=3,5,7', 'cfg++=0.4,0.8'] -> {'cfg': (3.0, 5.0, 7.0), 'cfg++': (0.4, 0.8)}."""
    scales: dict[str, tuple[float, ...]] = {}
    for item in items:
        method, sep, values = item.partition("=")
        method = method.strip().lower()
        if not sep or not values.strip():
            raise SweepError(f"scales: cannot read {item!r}; write METHOD=V1,V2 (e.g. cfg=3,5,7)")
        if method not in SCALED_METHODS:
            raise SweepError(f"scales: {method!r} takes no scale; scaled methods: {', '.join(SCALED_METHODS)}")
        try:
            parsed = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise SweepError(f"scales: {values!r} are not numbers (in {item!r})") from None
        if not parsed or any(v != v or v in (float("inf"), float("-inf")) for v in parsed):
            raise SweepError(f"scales: {item!r} needs finite numbers")
        scales[method] = tuple(dict.fromkeys(parsed))
    return scales


# ---- the plan -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepSpec:
    """Everything that decides a sweep's cells (its id is a hash of this)."""

    prompts: tuple[str, ...]
    methods: tuple[str, ...] = GUIDANCE_METHODS
    scales: dict[str, tuple[float, ...]] = field(default_factory=dict)
    solvers: tuple[str, ...] = ("euler",)
    steps: int = 20
    match_evaluations: bool = False
    seeds: tuple[int, ...] = (1, 2, 3, 4)
    model: str = EMBEDDED_MODEL
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    schedule: str = "default"

    def __post_init__(self) -> None:
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise SweepError("give at least one non-empty --prompt")
        for m in self.methods:
            if m not in GUIDANCE_METHODS:
                raise SweepError(f"unknown guidance method {m!r}; choose from: {', '.join(GUIDANCE_METHODS)}")
        for s in self.solvers:
            if s not in SOLVERS:
                raise SweepError(f"unknown solver {s!r}; choose from: {', '.join(SOLVERS)}")
        if self.steps < 1:
            raise SweepError(f"steps must be at least 1, got {self.steps}")
        unused = sorted(set(self.scales) - set(self.methods))
        if unused:
            raise SweepError(f"scales given for {', '.join(unused)}, which is not in --guidance")

    def scales_of(self, method: str) -> tuple[float | None, ...]:
        if method not in SCALED_METHODS:
            return (None,)
        return self.scales.get(method, (DEFAULT_SCALE[method],))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scales"] = {m: list(v) for m, v in sorted(self.scales.items())}
        for k in ("prompts", "methods", "solvers", "seeds"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepSpec:
        d = dict(d)
        d["scales"] = {m: tuple(float(x) for x in v) for m, v in d.get("scales", {}).items()}
        for k in ("prompts", "methods", "solvers", "seeds"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def sweep_id(self, model_identity: str = "") -> str:
        """'sw-' + 10 hex digits of the spec's canonical JSON and the model's weights identity: the same
        arguments on the same weights give the same sweep (new weights behind 'embedded' start a new one)."""
        blob = json.dumps({"spec": self.to_dict(), "model": model_identity}, sort_keys=True, separators=(",", ":"))
        return "sw-" + hashlib.sha256(blob.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Cell:
    """One image of a sweep."""

    prompt: str
    guidance: str
    scale: float | None
    solver: str
    steps: int
    seed: int

    @property
    def key(self) -> str:
        """A stable text key for matching cells against CSV rows and history runs."""
        scale = "" if self.scale is None else repr(float(self.scale))
        return json.dumps([self.prompt, self.guidance, scale, self.solver, self.steps, self.seed])

    @property
    def row_label(self) -> str:
        """The contact sheet's row label: method, scale, solver, steps and model evaluations."""
        scale = "" if self.scale is None else f" {self.scale:g}"
        return f"{self.guidance}{scale} {self.solver} {self.steps}st {self.planned_evaluations}ev"

    @property
    def planned_evaluations(self) -> int:
        return evaluations(self.solver, self.guidance, self.steps)

    def request(self, spec: SweepSpec, sweep_id: str, extra_tags: dict[str, str] | None = None) -> GenerationRequest:
        tags = {"sweep": sweep_id, **(extra_tags or {})}
        return GenerationRequest(
            prompt=self.prompt,
            negative_prompt=spec.negative_prompt,
            model=spec.model,
            width=spec.width,
            height=spec.height,
            seed=self.seed,
            steps=self.steps,
            solver=self.solver,
            schedule=spec.schedule,
            guidance=self.guidance,
            scale=self.scale,
            preview_every=0,  # nobody watches a sweep's previews; skip their cost
            decode_every=0,
            tags=tags,
        )


def cell_key_of_request(request: dict[str, Any]) -> str:
    """The cell key of a recorded request (a dict as the history stores it)."""
    scale = request.get("scale")
    if request.get("guidance") not in SCALED_METHODS:
        scale = None
    elif scale is None:
        scale = DEFAULT_SCALE[request["guidance"]]
    return Cell(
        request["prompt"], request["guidance"], scale, request["solver"], int(request["steps"]), int(request["seed"])
    ).key


def plan(spec: SweepSpec) -> list[Cell]:
    """The cells in sheet order: prompt, then method, scale, solver (rows), then seed (columns)."""
    budget = reference_budget(spec.steps)
    cells = []
    for prompt in spec.prompts:
        for method in spec.methods:
            for scale in spec.scales_of(method):
                for solver in spec.solvers:
                    steps = matched_steps(solver, method, budget) if spec.match_evaluations else spec.steps
                    for seed in spec.seeds:
                        cells.append(Cell(prompt, method, scale, solver, steps, seed))
    return cells


# ---- the CSV ------------------------------------------------------------------------------------------------

CSV_COLUMNS: tuple[str, ...] = (
    "sweep",
    "model_identity",
    "run_id",
    "prompt",
    "guidance",
    "scale",
    "solver",
    "steps",
    "seed",
    "evaluations",
    "planned_evaluations",
    "seconds",
    "colourfulness",
    "contrast",
    "saturation",
    "dynamic_range",
    "clip_score",
    "check_colour",
    "check_background",
    "check_shape",
    "check_all",
    "image",
    "key",
)


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.is_file():
        return []
    with csv_path.open(newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if row.get("key")]


def write_rows(csv_path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write the whole CSV through a temporary file, so a crash never leaves half a file."""
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in CSV_COLUMNS})
    os.replace(tmp, csv_path)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


# ---- checker --------------------------------------------------------------------------------------------------


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


# ---- execution ------------------------------------------------------------------------------------------------


@dataclass
class SweepReport:
    sweep_id: str
    total: int
    ran: int
    skipped: int
    failed: int
    csv_path: Path
    sheets: list[Path]
    seconds: float


def history_done_cells(store: Any, sweep_id: str, model_identity: str) -> dict[str, dict[str, Any]]:
    """Cells of this sweep done in the history with these weights: key -> {run_id, request, image, stats, metrics}.

    The newest done run of a cell wins (ids sort by creation time and `iter_runs` lists newest first)."""
    from tnr_tui.services.history import RunFilter

    done: dict[str, dict[str, Any]] = {}
    for run in store.iter_runs(RunFilter(sweep=sweep_id, status="done")):
        request = run.request
        key = cell_key_of_request(request)
        output = run.output("image")
        if key in done or output is None or run.model_identity != model_identity:
            continue
        done[key] = {
            "run_id": run.id,
            "request": request,
            "image": str(store.resolve(output.path)),
            "stats": {**(run.stats or {}), "model_evaluations": run.model_evaluations, "seconds": run.seconds},
            "metrics": run.metrics,
        }
    return done


def run_sweep(
    spec: SweepSpec,
    out_dir: Path,
    store: Any,
    *,
    sweep_id: str | None = None,
    bundle: Any = None,
    log: Callable[[str], None] = print,
    device: str = "auto",
    dtype: str = "auto",
    clip_model: Path | None = None,
) -> SweepReport:
    """Run every cell not yet done, append the CSV as it goes, then draw the contact sheets.

    `clip_model`: a local CLIP directory; adds a CLIP score per image (rows already in the CSV keep theirs)."""
    from PIL import Image

    from engine.metrics import image_metrics

    started = time.perf_counter()
    if bundle is None:
        from engine.models import load_bundle

        bundle = load_bundle(spec.model, device=device, dtype=dtype)
    identity = str(bundle.identity)
    sweep_id = sweep_id or spec.sweep_id(identity)
    embedded = is_embedded(spec.model, bundle)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "sweep.json"
    manifest.write_text(json.dumps({"sweep": sweep_id, "spec": spec.to_dict()}, indent=2, sort_keys=True) + "\n")
    csv_path = out_dir / "sweep.csv"
    cells = plan(spec)
    wanted = {c.key for c in cells}

    scorer = None
    if clip_model is not None:
        from engine.metrics import ClipScorer, MetricsError

        try:
            scorer = ClipScorer(clip_model)
        except MetricsError as e:
            raise SweepError(str(e)) from None

    def measured(image: Any, prompt: str, metrics: dict[str, float] | None) -> dict[str, float]:
        values = dict(metrics or image_metrics(image))
        if scorer is not None:
            values["clip_score"] = scorer.score(image, prompt)
        return values

    rows: dict[str, dict[str, Any]] = {}
    for row in read_rows(csv_path):
        same = row.get("sweep") == sweep_id and row.get("model_identity") == identity
        if same and row["key"] in wanted and Path(row.get("image", "")).is_file():
            rows[row["key"]] = row
    # Runs done in the history but missing from the CSV (a crash between the two, or a deleted CSV).
    for key, done in history_done_cells(store, sweep_id, identity).items():
        if key in wanted and key not in rows and done.get("image") and Path(done["image"]).is_file():
            image = Image.open(done["image"]).convert("RGB")
            prompt = done["request"]["prompt"]
            metrics = measured(image, prompt, done.get("metrics"))
            verdicts = check_verdicts(image, prompt) if embedded else {}
            rows[key] = _row(sweep_id, key, done, metrics, verdicts)
            rows[key]["model_identity"] = identity
    skipped = len(rows)
    todo = [c for c in cells if c.key not in rows]
    log(f"sweep {sweep_id}: {len(cells)} cells, {skipped} already done, {len(todo)} to run")
    if spec.match_evaluations:
        log(
            f"  matched to {reference_budget(spec.steps)} model evaluations (Euler, one prediction, {spec.steps} steps):"
        )
        for method, solver, steps in dict.fromkeys((c.guidance, c.solver, c.steps) for c in cells):
            log(f"    {method:<8} {solver:<8} {steps:>3} steps = {evaluations(solver, method, steps)} evaluations")

    ran = failed = 0
    if todo:
        from tnr_tui.services import runs

        for i, cell in enumerate(todo, 1):
            request = cell.request(spec, sweep_id)
            if device != "auto" or dtype != "auto":
                request = request.replace(device=device, dtype=dtype)
            try:
                outcome = runs.execute(request, store, bundle=bundle, origin="sweep")
            except Exception as e:  # recorded as failed in the history by execute; the sweep goes on
                failed += 1
                log(f"  [{i}/{len(todo)}] {cell.row_label} seed {cell.seed}: failed: {e}")
                continue
            if outcome.status != "done":
                failed += 1
                log(f"  [{i}/{len(todo)}] {cell.row_label} seed {cell.seed}: {outcome.status}")
                continue
            ran += 1
            image = outcome.image
            done = {
                "run_id": outcome.run_id,
                "request": outcome.request.to_dict(),
                "image": str(outcome.image_path),
                "stats": outcome.stats,
            }
            metrics = measured(image, cell.prompt, outcome.metrics)
            verdicts = check_verdicts(image, cell.prompt) if embedded else {}
            rows[cell.key] = _row(sweep_id, cell.key, done, metrics, verdicts)
            rows[cell.key]["model_identity"] = identity
            write_rows(csv_path, _ordered(cells, rows))
            log(
                f"  [{i}/{len(todo)}] {cell.row_label} seed {cell.seed}: "
                f"{outcome.stats.get('model_evaluations')} evaluations, {outcome.stats.get('seconds', 0):.2f} s"
            )
    write_rows(csv_path, _ordered(cells, rows))
    sheets = write_contact_sheets(spec, cells, rows, out_dir)
    return SweepReport(sweep_id, len(cells), ran, skipped, failed, csv_path, sheets, time.perf_counter() - started)


def _row(
    sweep_id: str, key: str, done: dict[str, Any], metrics: dict[str, float], verdicts: dict[str, Any]
) -> dict[str, Any]:
    req = done["request"]
    stats = done.get("stats") or {}
    cell = json.loads(key)
    return {
        "sweep": sweep_id,
        "run_id": done.get("run_id"),
        "prompt": req["prompt"],
        "guidance": req["guidance"],
        "scale": cell[2],
        "solver": req["solver"],
        "steps": req["steps"],
        "seed": req["seed"],
        "evaluations": stats.get("model_evaluations"),
        "planned_evaluations": evaluations(req["solver"], req["guidance"], int(req["steps"])),
        "seconds": stats.get("seconds"),
        **{k: float(v) for k, v in metrics.items() if k in CSV_COLUMNS},
        **verdicts,
        "image": done.get("image"),
        "key": key,
    }


def _ordered(cells: list[Cell], rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [rows[c.key] for c in cells if c.key in rows]


# ---- contact sheets -------------------------------------------------------------------------------------------

THUMB = 128
PAD = 4


def slug(text: str, limit: int = 48) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (s[:limit].rstrip("-") or "prompt") + "-" + hashlib.sha1(text.encode()).hexdigest()[:6]


def write_contact_sheets(
    spec: SweepSpec, cells: list[Cell], rows: dict[str, dict[str, Any]], out_dir: Path
) -> list[Path]:
    """One PNG per prompt: rows method/scale/solver, columns seeds, each row labelled at its left."""
    sheets = []
    for prompt in spec.prompts:
        mine = [c for c in cells if c.prompt == prompt]
        labels = list(dict.fromkeys(c.row_label for c in mine))
        grid: dict[tuple[str, int], Path] = {}
        for c in mine:
            row = rows.get(c.key)
            if row and row.get("image"):
                grid[(c.row_label, c.seed)] = Path(row["image"])
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
            if isinstance(src, Path):
                if src.is_file():
                    with Image.open(src) as im:
                        src = im.convert("RGB")
                else:
                    src = None
            if src is None:
                draw.rectangle((x, y, x + THUMB - 1, y + THUMB - 1), outline=(200, 200, 200))
                draw.text((x + 8, y + THUMB // 2 - 7), "missing", fill=(160, 160, 160), font=font)
                continue
            sheet.paste(thumbnail(src), (x, y))
    tmp = path.with_name(path.name + ".tmp.png")
    sheet.save(tmp)
    os.replace(tmp, path)


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

"""Per-step telemetry of a run: one row per step and image, computed in one place (docs/MATH.md 12).

At the first stage of every step (its first model evaluation) the sampler hands a `Recorder` what that
evaluation saw: the latent x and sigma, the raw predictions by kind (c the prompt's eps, u the negative
prompt's), the guided eps `den` the solver moves along and what the guidance method put in
`Predictions.extras`; after the step, what the solver put in `SolverContext.extras`. The row (per image):

    index, sigma, sigma_next, timestep   the step; timestep: what the UNet was handed at sigma
    evaluations                          model evaluations spent once the step is done (per image)
    tnr_factor                           S = 2 - abar(sigma_next)^p where the run uses TNR, else null
    norm_cond, norm_uncond               ||c||, ||u||: L2 over the whole latent of one image
    norm_diff, diff_ratio                ||c - u|| and ||c - u|| / ||u|| (the notebook's "a hundredth")
    cos_diff_uncond                      <c - u, u> / (||c - u|| ||u||)
    norm_guided                          ||den||: the eps the solver steps along (TNR's push included)
    norm_x, std_x                        ||x|| and the standard deviation (n - 1) of x at the step's start
    x0_change                            ||D_i - D_(i-1)|| / ||D_i||, D = x - sigma den; null at step 0
    extras (EXTRAS)                      what a method or solver adds; null on steps where it added nothing

A value a step does not have (u for a one-prediction method or outside the guidance window) is null.

Every norm of a step comes from ONE Gram matrix: its vectors (x, den, c, u, the previous step's x and den,
the extras' tensors, and a ones vector for the mean of x) are stacked per image, widened to float64 and
multiplied once (V V^T), all on the device; D = x - sigma den, c - u and D_i - D_(i-1) are combinations of
them, so their norms and inner products are quadratic forms of that matrix. The Gram matrices go to the CPU once per step where a caller
watches the steps (`on_step`: its event carries the rows) and once at the end otherwise, so telemetry adds
no device synchronisation of its own inside the loop.

Torch-free at import (the history reads `StepTable` without torch).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import torch

TELEMETRY_FORMAT = 1

COLUMNS: tuple[str, ...] = (
    "index",
    "sigma",
    "sigma_next",
    "timestep",
    "evaluations",
    "tnr_factor",
    "norm_cond",
    "norm_uncond",
    "norm_diff",
    "diff_ratio",
    "cos_diff_uncond",
    "norm_guided",
    "norm_x",
    "std_x",
    "x0_change",
)
INTEGER_COLUMNS: tuple[str, ...] = ("index", "evaluations")

# The extras the lab's units add today (any unit may add its own name; these are documented ones).
EXTRAS: dict[str, str] = {
    "apg_parallel": "APG: ||d_par||, the part of the (momentum-averaged, norm-capped) c - u parallel to c, in the "
    "space APG combines in (v on a v-prediction model)",
    "apg_orthogonal": "APG: ||d_orth|| = ||d - d_par||",
    "perturbed_term": "PAG, SEG, SLG: ||s (c - p)||, the perturbed pass's term (steps where it is on)",
    "noise_injected": "ancestral and SDE solvers: ||sigma_up z||, the fresh noise of the step's last injection "
    "(the one x_next keeps)",
}

Value = float | int | None


class TelemetryError(ValueError):
    """A stored or imported step table is malformed; the message says how."""


def _clean(value: Any) -> Value:
    """A JSON-safe number: ints stay ints, non-finite floats become None (JSON has no NaN)."""
    if value is None or isinstance(value, bool):
        return None if value is None else int(value)
    if isinstance(value, int):
        return value
    v = float(value)
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class StepTable:
    """The rows of one image's run: `columns` (COLUMNS, then the extras in order of first appearance) and
    one row per step, each value a number or None."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Value, ...], ...]

    def __post_init__(self) -> None:
        columns = tuple(self.columns)
        if not all(isinstance(c, str) and c for c in columns) or len(set(columns)) != len(columns):
            raise TelemetryError("step table columns must be distinct non-empty names")
        rows = []
        for n, row in enumerate(self.rows):
            if not isinstance(row, (list, tuple)):
                raise TelemetryError(f"step table row {n} is not a list of values")
            if len(row) != len(columns):
                raise TelemetryError(f"step table row {n} has {len(row)} values, not {len(columns)}")
            try:
                rows.append(tuple(_clean(v) for v in row))
            except (TypeError, ValueError, OverflowError):
                raise TelemetryError(f"step table row {n} holds a value that is not a number") from None
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "rows", tuple(rows))

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list[Value]:
        """One column's values, step by step (KeyError for a column the table lacks)."""
        j = self.columns.index(name) if name in self.columns else None
        if j is None:
            raise KeyError(name)
        return [row[j] for row in self.rows]

    def row(self, i: int) -> dict[str, Value]:
        return dict(zip(self.columns, self.rows[i], strict=True))

    def as_dicts(self) -> list[dict[str, Value]]:
        return [self.row(i) for i in range(len(self.rows))]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: {"format": 1, "columns": [...], "rows": [[...], ...]} (null for a missing value)."""
        return {"format": TELEMETRY_FORMAT, "columns": list(self.columns), "rows": [list(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, data: Any) -> StepTable:
        if not isinstance(data, Mapping):
            raise TelemetryError(f"steps must be a JSON object, got {type(data).__name__}")
        fmt = data.get("format", TELEMETRY_FORMAT)
        if fmt != TELEMETRY_FORMAT:
            raise TelemetryError(f"steps format {fmt!r} is not supported (this version reads {TELEMETRY_FORMAT})")
        columns, rows = data.get("columns"), data.get("rows")
        if not isinstance(columns, list) or not isinstance(rows, list):
            raise TelemetryError("steps need a list of columns and a list of rows")
        return cls(tuple(columns), tuple(tuple(r) if isinstance(r, list) else r for r in rows))

    def write_csv(self, out: TextIO) -> None:
        """A header of the columns, then one line per step (an empty field for a missing value)."""
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])


def table_of(rows: Sequence[Mapping[str, Value]], *, checked: bool = True) -> StepTable:
    """A StepTable from row dicts: COLUMNS first, then every other key in order of first appearance.

    `checked=False` (the recorder's own rows, clean already) skips the per-value check."""
    extras: dict[str, None] = {}
    for row in rows:
        extras.update((k, None) for k in row if k not in COLUMNS)
    columns = COLUMNS + tuple(extras)
    values = tuple(tuple(row.get(c) for c in columns) for row in rows)
    if checked:
        return StepTable(columns, values)
    table = object.__new__(StepTable)
    object.__setattr__(table, "columns", columns)
    object.__setattr__(table, "rows", values)
    return table


# ---- the recorder (torch inside its methods only) ----------------------------------------------------------


@dataclass
class _FirstStage:
    meta: dict[str, Value]
    x: Any
    den: Any
    cond: Any
    uncond: Any
    extras: dict[str, Any]


# A combination of the stacked vectors: name -> coefficient (its squared norm is c^T G c).
Combination = dict[str, float]


@dataclass
class _Pending:
    """One step's numbers, still on the device: the Gram matrix [B, K, K] of `names` and [B, k] `scalars`."""

    meta: dict[str, Value]
    names: list[str]
    combos: dict[str, Combination]  # the derived vectors (D, c - u, D - D_prev) as combinations of `names`
    scalar_names: list[str]
    flat: Any  # the Gram, then the scalars, flattened into one tensor (one transfer)
    n: int  # elements per image of the latent (the ones vector's squared norm)
    plain: dict[str, float] = field(default_factory=dict)  # extras given as Python numbers


class Recorder:
    """Collects a run's rows for a batch of `batch` images; see the module docstring."""

    def __init__(self, batch: int = 1) -> None:
        self.batch = batch
        self._first: _FirstStage | None = None
        self._previous: tuple[Any, Any, float] | None = None  # (x, den, sigma) of the last step's first stage
        self._pending: list[_Pending] = []
        self._rows: list[list[dict[str, Value]]] = [[] for _ in range(batch)]

    def first_stage(
        self,
        *,
        index: int,
        sigma: float,
        sigma_next: float,
        timestep: float,
        tnr_factor: float | None,
        x: torch.Tensor,
        den: torch.Tensor,
        cond: torch.Tensor | None,
        uncond: torch.Tensor | None,
        extras: Mapping[str, Any] | None = None,
    ) -> None:
        """What the step's first evaluation saw (references only: nothing is computed until `end_step`)."""
        meta: dict[str, Value] = {
            "index": index,
            "sigma": float(sigma),
            "sigma_next": float(sigma_next),
            "timestep": float(timestep),
            "tnr_factor": None if tnr_factor is None else float(tnr_factor),
        }
        self._first = _FirstStage(meta, x, den, cond, uncond, dict(extras or {}))

    def end_step(self, evaluations: int, solver_extras: Mapping[str, Any] | None = None) -> None:
        """The step is done: its Gram matrix, computed on the device and kept there.

        The vectors stacked are the step's own (x, den, c, u), the previous step's x and den, the extras'
        tensors and ones; D = x - sigma den, c - u and D_i - D_(i-1) are combinations of them, whose norms are
        quadratic forms of the float64 Gram matrix (exact products of float32 inputs, so the cancellation in
        D_i - D_(i-1) late in a run costs nothing visible). Without float64 (MPS) they are formed explicitly.
        """
        import torch

        first, self._first = self._first, None
        if first is None:  # a step without an evaluation (none today): no row
            return
        b, x = self.batch, first.x
        n = x[0].numel()
        sigma = float(first.meta["sigma"])
        wide = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
        vectors: dict[str, Any] = {"x": x, "den": first.den}
        combos: dict[str, Combination] = {"denoised": {"x": 1.0, "den": -sigma}}
        if first.cond is not None:
            vectors["cond"] = first.cond
        if first.uncond is not None:
            vectors["uncond"] = first.uncond
            if first.cond is not None:
                combos["diff"] = {"cond": 1.0, "uncond": -1.0}
        if self._previous is not None:
            x_prev, den_prev, sigma_prev = self._previous
            vectors.update(x_prev=x_prev, den_prev=den_prev)
            combos["change"] = {"x": 1.0, "den": -sigma, "x_prev": -1.0, "den_prev": sigma_prev}
        self._previous = (x, first.den, sigma)
        if wide != torch.float64:  # float32 quadratic forms would cancel badly: form the vectors themselves
            for name, combo in list(combos.items()):
                vectors[name] = sum(c * vectors[k].to(wide) for k, c in combo.items())
                combos[name] = {name: 1.0}
        scalars: dict[str, Any] = {}
        plain: dict[str, float] = {}
        for name, value in {**first.extras, **dict(solver_extras or {})}.items():
            if not isinstance(value, torch.Tensor):
                if value is not None:
                    plain[name] = float(value)
            elif value.shape == x.shape:
                vectors["extra:" + name] = value  # its norm comes from the Gram matrix
            elif value.ndim > 1:
                scalars[name] = value.flatten(1).norm(dim=1)
            else:
                scalars[name] = value.reshape(-1).expand(b) if value.numel() == 1 else value.reshape(b)
        vectors["ones"] = _ones(tuple(x.shape), x.dtype, x.device)
        # One stack (dtypes promote), one widening, one batched product: a handful of operations per step.
        stacked = torch.stack(list(vectors.values()), 1).reshape(b, len(vectors), n).to(wide)
        flat = (stacked @ stacked.transpose(1, 2)).reshape(-1)
        if scalars:
            flat = torch.cat([flat, torch.stack([s.to(wide) for s in scalars.values()], 1).reshape(-1)])
        meta = {**first.meta, "evaluations": int(evaluations)}
        self._pending.append(_Pending(meta, list(vectors), combos, list(scalars), flat.detach(), n, plain))

    def last_rows(self) -> list[dict[str, Value]]:
        """The latest step's row of every image (moves what is pending to the CPU: one transfer)."""
        self._flush()
        return [rows[-1] if rows else {} for rows in self._rows]

    def tables(self) -> list[StepTable]:
        """One table per image of the batch."""
        self._flush()
        return [table_of(rows, checked=False) for rows in self._rows]

    def _flush(self) -> None:
        import torch

        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flat = (pending[0].flat if len(pending) == 1 else torch.cat([p.flat for p in pending])).cpu().tolist()
        at = 0
        b = self.batch
        for p in pending:
            k, s = len(p.names), len(p.scalar_names)
            gram, at = flat[at : at + b * k * k], at + b * k * k
            scalar, at = flat[at : at + b * s], at + b * s
            for image in range(b):
                g = gram[image * k * k : (image + 1) * k * k]
                row = _row(p, {name: i for i, name in enumerate(p.names)}, g, k)
                row.update(zip(p.scalar_names, scalar[image * s : (image + 1) * s], strict=True))
                self._rows[image].append({name: _clean(v) for name, v in row.items()})


def _row(p: _Pending, at: dict[str, int], g: list[float], k: int) -> dict[str, Value]:
    """One image's columns from its Gram matrix g (row-major k x k) over the vectors named in `at`."""

    def inner(a: Combination, b: Combination) -> float:
        total = 0.0
        for na, ca in a.items():
            base = at[na] * k
            for nb, cb in b.items():
                total += ca * cb * g[base + at[nb]]
        return total

    def norm(name: str) -> float | None:
        v = p.combos.get(name) or ({name: 1.0} if name in at else None)
        return None if v is None else math.sqrt(max(inner(v, v), 0.0))

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    norm_diff, norm_uncond = norm("diff"), norm("uncond")
    dot = inner(p.combos["diff"], {"uncond": 1.0}) if "diff" in p.combos else None
    xx, x1 = g[at["x"] * (k + 1)], g[at["x"] * k + at["ones"]]
    variance = (xx - x1 * x1 / p.n) / (p.n - 1) if p.n > 1 else 0.0
    row: dict[str, Value] = {
        **p.meta,
        "norm_cond": norm("cond"),
        "norm_uncond": norm_uncond,
        "norm_diff": norm_diff,
        "diff_ratio": ratio(norm_diff, norm_uncond),
        "cos_diff_uncond": ratio(dot, None if not norm_diff or not norm_uncond else norm_diff * norm_uncond),
        "norm_guided": norm("den"),
        "norm_x": math.sqrt(max(xx, 0.0)),
        "std_x": math.sqrt(max(variance, 0.0)),
        "x0_change": ratio(norm("change"), norm("denoised")),
    }
    for name in at:
        if name.startswith("extra:"):
            row[name[6:]] = norm(name)
    row.update(p.plain)
    return row


_ONES: dict[tuple[Any, ...], Any] = {}


def _ones(shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
    """Ones of the latent's shape (the mean of x comes from its dot product with them), made once per shape."""
    import torch

    key = (shape, dtype, device)
    if key not in _ONES:
        if len(_ONES) > 8:
            _ONES.clear()
        _ONES[key] = torch.ones(shape, dtype=dtype, device=device)
    return _ONES[key]


def cond_and_uncond(guide: Any, predictions: torch.Tensor, batch: int) -> tuple[Any, Any]:
    """(c, u) of one batched call of a step (`engine.guidance.StepGuidance` `guide`), each [batch, ...] or None.

    c: the prompt's prediction ("cond"; in the N-prompt form the request's prompt where the step evaluates it).
    u: the negative prompt's ("uncond"; in the N-prompt form the first prompt, which plays the negative)."""
    kinds = [(r, k) for r, k in zip(guide.rows, guide.kinds, strict=True) if k != "perturbed"]
    plan = guide.plan
    c = u = None
    for j, (row, kind) in enumerate(kinds):
        chunk = predictions[j * batch : (j + 1) * batch]
        if kind == "cond" or (kind == "prompt" and row == plan.conditional_row):
            c = chunk
        elif kind == "uncond" or (kind == "prompt" and j == 0):
            u = chunk
    return c, u


def series(tables: Iterable[StepTable], name: str) -> list[list[Value]]:
    """The column `name` of each table (None-filled where a table lacks it): for plots over runs."""
    return [t.column(name) if name in t.columns else [None] * len(t) for t in tables]

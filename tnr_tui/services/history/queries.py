"""Filters for listing runs. Pagination is keyset on the run id (ids sort by creation time), newest first."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, literal_column, or_

from tnr_tui.services.history.models import RUN_STATUSES, Run


class FilterError(ValueError):
    """A filter value is invalid; the message is for the user."""


@dataclass(frozen=True)
class RunFilter:
    text: str | None = None  # substring of the prompt or negative prompt, case-insensitive (ASCII): search.py
    guidance: str | None = None
    solver: str | None = None
    status: str | None = None
    favourite: bool | None = None
    since: datetime | None = None  # created_at >= since (naive UTC)
    until: datetime | None = None  # created_at < until
    sweep: str | None = None
    model: str | None = None
    schedule: str | None = None  # the schedule the run sampled (schema 7 indexes format 2's "karras" as such)
    # (NAME, VALUE text) pairs over the stored request's solver_params / guidance_params, all of which must
    # hold: the value is parsed by the unit's Param (so eta=1 matches 1.0), a run that left it out matches
    # its unit's default (the value it sampled with), and only runs of a unit that has the parameter match.
    solver_params: tuple[tuple[str, str], ...] = ()
    guidance_params: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        from engine.request import GUIDANCE_METHODS, SCHEDULES, SOLVERS, unit_registry  # torch-free

        # A unit's A1111 / ComfyUI name ("DPM++ 2M", "Karras") finds the runs of the unit it stands for.
        for field in ("guidance", "solver", "schedule"):
            value = getattr(self, field)
            if isinstance(value, str):
                object.__setattr__(self, field, unit_registry(field).canonical(value) or value)
        # A misspelt value would match nothing and read as "no runs": refuse it by name instead.
        for what, value, choices in (
            ("status", self.status, RUN_STATUSES),
            ("guidance method", self.guidance, GUIDANCE_METHODS),
            ("solver", self.solver, SOLVERS),
            ("schedule", self.schedule, SCHEDULES),
        ):
            if value is not None and value not in choices:
                raise FilterError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
        for field in ("solver_params", "guidance_params"):
            object.__setattr__(self, field, tuple((str(n), str(v)) for n, v in getattr(self, field)))
            self._param_matches(field)  # refuses an unknown name or a value no unit takes
        if self.since and self.until and self.since >= self.until:
            raise FilterError("date range is empty: the start is not before the end")

    def _param_matches(self, field: str) -> list[list[tuple[str, str, Any, Any]]]:
        """Per (NAME, VALUE) of `field`: the (unit, name, value parsed by its Param, its default) of every unit
        it can match (the chosen solver / guidance method only, where the filter names one)."""
        from engine import units  # torch-free

        registry, chosen = (units.SOLVERS, self.solver) if field == "solver_params" else (units.GUIDANCE, self.guidance)
        kind = registry.kind
        found = []
        for name, value in getattr(self, field):
            name = name.strip().replace("-", "_")
            having = [u for u in registry if any(p.name == name for p in u.params)]
            if not name or not having:
                raise FilterError(f"no {kind} has a parameter {name!r} ('tnr-lab units' lists them)")
            names = ", ".join(u.name for u in having)
            if chosen is not None:
                if chosen not in {u.name for u in having}:
                    raise FilterError(f"the {kind} {chosen!r} has no parameter {name!r} (these have: {names})")
                having = [registry.get(chosen)]
            matches, failures = [], []
            for unit in having:
                param = next(p for p in unit.params if p.name == name)
                try:
                    matches.append((unit.name, name, param.parse(value), param.default))
                except units.UnitError as e:
                    failures.append(str(e))
            if not matches:
                raise FilterError(f"{kind} parameter {failures[0]}")
            found.append(matches)
        return found

    def conditions(self, dialect: str = "sqlite", *, text: bool = True) -> list[Any]:
        """The WHERE clauses of this filter (`text=False`: all but the prompt search's own)."""
        found: list[Any] = []
        if text and self.text:
            found.append(text_condition(self.text, dialect))
        if self.guidance:
            found.append(Run.guidance == self.guidance)
        if self.solver:
            found.append(Run.solver == self.solver)
        if self.status:
            found.append(Run.status == self.status)
        if self.favourite is not None:
            found.append(Run.favourite == self.favourite)
        if self.since:
            found.append(Run.created_at >= self.since)
        if self.until:
            found.append(Run.created_at < self.until)
        if self.sweep:
            found.append(Run.sweep == self.sweep)
        if self.model:
            found.append(Run.model == self.model)
        if self.schedule:
            found.append(Run.schedule == self.schedule)
        for field, column in (("solver_params", Run.solver), ("guidance_params", Run.guidance)):
            for matches in self._param_matches(field):
                found.append(
                    or_(
                        *(
                            and_(column == unit, param_condition(field, name, value, value == default, dialect))
                            for unit, name, value, default in matches
                        )
                    )
                )
        return found

    def apply(self, query: Select[Any], dialect: str = "sqlite") -> Select[Any]:
        conditions = self.conditions(dialect)
        return query.where(*conditions) if conditions else query


def param_condition(field: str, name: str, value: Any, is_default: bool, dialect: str = "sqlite") -> Any:
    """The stored request's `field`.`name` equals `value` (numbers by value: 1 matches 1.0), or, where
    `is_default`, the request left it out (format 1 requests have no parameter dicts at all). SQLite:
    json_extract / json_type over the request text; PostgreSQL: the text as jsonb (whose numbers compare by
    value) and its -> operator."""
    if dialect == "postgresql":
        from sqlalchemy import cast, literal
        from sqlalchemy.dialects.postgresql import JSONB

        stored = cast(Run.request_json, JSONB)[field][name]
        same = stored == cast(literal(json.dumps(value)), JSONB)
        return or_(same, stored.is_(None)) if is_default else same
    path = f'$.{field}."{name}"'
    kind = func.json_type(Run.request_json, path)  # NULL where absent, 'null' for a JSON null
    if value is None:
        same = kind == "null"
    else:
        same = func.json_extract(Run.request_json, path) == (int(value) if isinstance(value, bool) else value)
        if isinstance(value, str):  # a text '1' is not the number 1
            same = and_(same, kind == "text")
        elif isinstance(value, bool):
            same = and_(same, kind.in_(("true", "false")))
    return or_(same, kind.is_(None)) if is_default else same


def _like_pattern(needle: str) -> str:
    return "%" + needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def text_condition(needle: str, dialect: str = "sqlite") -> Any:
    """`needle` is a substring of the prompt or the negative prompt, ASCII letters case-insensitive: SQLite's
    LIKE as it is; on PostgreSQL (whose LIKE is case-sensitive, ILIKE Unicode-aware) LIKE over both sides with
    ASCII letters lowered, the expression its trigram indexes are built on (migrations.PG_ASCII_LOWER)."""
    if dialect == "postgresql":
        from tnr_tui.services.history.search import ascii_lower

        upper = literal_column("'ABCDEFGHIJKLMNOPQRSTUVWXYZ'")
        lower = literal_column("'abcdefghijklmnopqrstuvwxyz'")
        low = ascii_lower(needle)
        pattern = _like_pattern(low)
        like = or_(
            func.translate(Run.prompt, upper, lower).like(pattern, escape="\\"),
            func.translate(Run.negative_prompt, upper, lower).like(pattern, escape="\\"),
        )
        if len(needle) > 2:
            return like
        # 1-2 characters: the index of short substrings (migrations.PG_GRAMS_V2) proposes, LIKE decides.
        from sqlalchemy import Text, cast
        from sqlalchemy.dialects.postgresql import ARRAY, array

        grams = func.tnr_grams_v2(Run.prompt, Run.negative_prompt)
        return and_(grams.op("@>")(cast(array([low]), ARRAY(Text))), like)
    pattern = _like_pattern(needle)
    return or_(Run.prompt.like(pattern, escape="\\"), Run.negative_prompt.like(pattern, escape="\\"))

"""Filters for listing runs. Pagination is keyset on the run id (ids sort by creation time), newest first."""

from __future__ import annotations

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

    def __post_init__(self) -> None:
        from engine.request import GUIDANCE_METHODS, SCHEDULES, SOLVERS  # torch-free

        # A misspelt value would match nothing and read as "no runs": refuse it by name instead.
        for what, value, choices in (
            ("status", self.status, RUN_STATUSES),
            ("guidance method", self.guidance, GUIDANCE_METHODS),
            ("solver", self.solver, SOLVERS),
            ("schedule", self.schedule, SCHEDULES),
        ):
            if value is not None and value not in choices:
                raise FilterError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
        if self.since and self.until and self.since >= self.until:
            raise FilterError("date range is empty: the start is not before the end")

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
        return found

    def apply(self, query: Select[Any], dialect: str = "sqlite") -> Select[Any]:
        conditions = self.conditions(dialect)
        return query.where(*conditions) if conditions else query


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

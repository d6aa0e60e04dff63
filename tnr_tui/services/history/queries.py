"""Filters for listing runs. Pagination is keyset on the run id (ids sort by creation time), newest first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, or_

from tnr_tui.services.history.models import RUN_STATUSES, Run


class FilterError(ValueError):
    """A filter value is invalid; the message is for the user."""


@dataclass(frozen=True)
class RunFilter:
    text: str | None = None  # substring of the prompt or negative prompt, case-insensitive (ASCII)
    guidance: str | None = None
    solver: str | None = None
    status: str | None = None
    favourite: bool | None = None
    since: datetime | None = None  # created_at >= since (naive UTC)
    until: datetime | None = None  # created_at < until
    sweep: str | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        from engine.request import GUIDANCE_METHODS, SOLVERS  # torch-free

        # A misspelt value would match nothing and read as "no runs": refuse it by name instead.
        for what, value, choices in (
            ("status", self.status, RUN_STATUSES),
            ("guidance method", self.guidance, GUIDANCE_METHODS),
            ("solver", self.solver, SOLVERS),
        ):
            if value is not None and value not in choices:
                raise FilterError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
        if self.since and self.until and self.since >= self.until:
            raise FilterError("date range is empty: the start is not before the end")

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.text:
            pattern = "%" + self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            query = query.where(
                or_(Run.prompt.like(pattern, escape="\\"), Run.negative_prompt.like(pattern, escape="\\"))
            )
        if self.guidance:
            query = query.where(Run.guidance == self.guidance)
        if self.solver:
            query = query.where(Run.solver == self.solver)
        if self.status:
            query = query.where(Run.status == self.status)
        if self.favourite is not None:
            query = query.where(Run.favourite == self.favourite)
        if self.since:
            query = query.where(Run.created_at >= self.since)
        if self.until:
            query = query.where(Run.created_at < self.until)
        if self.sweep:
            query = query.where(Run.sweep == self.sweep)
        if self.model:
            query = query.where(Run.model == self.model)
        return query

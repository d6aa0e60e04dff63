"""The history's tables as SQLAlchemy 2.0 typed models (the latest schema; migrations.py builds it).

Times are naive UTC datetimes. The request is stored whole as JSON (`request_json`, the truth) and
again in indexed columns for what people filter and sort on.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

RUN_STATUSES: tuple[str, ...] = ("queued", "running", "done", "failed", "cancelled", "interrupted")
# Statuses of a run whose process may still be working on it.
LIVE_STATUSES: tuple[str, ...] = ("queued", "running")
# frames / decoded_frames: a run's trajectory (frames.py: one APNG each, GenerationRequest.keep_frames).
OUTPUT_KINDS: tuple[str, ...] = ("image", "latent", "preview", "frames", "decoded_frames")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat(timespec="milliseconds") + "Z"


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc).replace(tzinfo=None)
    return t


class _JSONText(TypeDecorator[Any]):
    """JSON kept as text, as SQLite keeps its JSON columns: PostgreSQL's json type refuses the NaN that
    json.dumps writes for a NaN metric, and a history must keep what it was given."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else json.dumps(value)

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else json.loads(value)


# SQLite's INTEGER is 64-bit; PostgreSQL's is not (its columns are BIGINT, and psycopg binds with a cast).
INT = Integer().with_variant(BigInteger(), "postgresql")
# SQLite: SQLAlchemy's JSON as it always was; PostgreSQL: text (migrations.PG_SCHEMA_V1).
JSON_COLUMN = JSON().with_variant(_JSONText(), "postgresql")


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"
    # Schema 8: a page of one status or of the favourites, newest first, walks its index in order instead of
    # sorting every run of that status (status 'failed' alone took 122 ms at 1 000 000 runs).
    __table_args__ = (
        Index("ix_runs_status_id", "status", "id"),
        Index("ix_runs_favourite_id", "favourite", "id"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16), index=True)

    request_json: Mapped[str] = mapped_column(Text)
    prompt: Mapped[str] = mapped_column(Text, default="")
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    model: Mapped[str] = mapped_column(Text, default="")
    solver: Mapped[str] = mapped_column(String(16), index=True)
    guidance: Mapped[str] = mapped_column(String(16), index=True)
    scale: Mapped[float | None] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(INT)
    seed: Mapped[int] = mapped_column(INT)
    width: Mapped[int | None] = mapped_column(INT)
    height: Mapped[int | None] = mapped_column(INT)
    schedule: Mapped[str] = mapped_column(String(16), default="default")

    # The model as loaded: where it came from and a content hash of its weights.
    model_path: Mapped[str | None] = mapped_column(Text)
    model_name: Mapped[str | None] = mapped_column(Text)
    model_identity: Mapped[str | None] = mapped_column(String(64))

    seconds: Mapped[float | None] = mapped_column(Float)
    seconds_per_step: Mapped[float | None] = mapped_column(Float)
    model_evaluations: Mapped[int | None] = mapped_column(INT)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON_COLUMN)
    # The rest of the sampler's stats (sigmas, TNR factors, equivalent CFG scale ...).
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON_COLUMN)

    device: Mapped[str | None] = mapped_column(String(32))
    dtype: Mapped[str | None] = mapped_column(String(16))
    versions: Mapped[dict[str, Any] | None] = mapped_column(JSON_COLUMN)
    error: Mapped[str | None] = mapped_column(Text)

    favourite: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    notes: Mapped[str] = mapped_column(Text, default="")
    pid: Mapped[int | None] = mapped_column(INT)
    host: Mapped[str | None] = mapped_column(String(255))
    origin: Mapped[str] = mapped_column(String(16), default="cli")  # cli, tui, sweep, rerun, import

    # Schema 2: the sweep tag and re-run lineage.
    sweep: Mapped[str | None] = mapped_column(String(64), index=True)
    parent_id: Mapped[str | None] = mapped_column(String(26))

    # Schema 3: the prompt-search index's key (search.py): unique, and ordered like the id to the second, so
    # the full-text index can be read newest first and stop after one page. Assigned by the store; never
    # NULL (SQLite could only add the column nullable: a trigger refuses a run without it; PostgreSQL: NOT NULL).
    search_key: Mapped[int] = mapped_column(BigInteger, unique=True, nullable=True)

    outputs: Mapped[list[Output]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, order_by="Output.id"
    )

    @property
    def request(self) -> dict[str, Any]:
        return json.loads(self.request_json)

    def output(self, kind: str) -> Output | None:
        return next((o for o in self.outputs if o.kind == kind), None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (used by `show --json`, export and the TUI details)."""
        return {
            "id": self.id,
            "status": self.status,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "model": self.model,
            "solver": self.solver,
            "guidance": self.guidance,
            "scale": self.scale,
            "steps": self.steps,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "schedule": self.schedule,
            "model_path": self.model_path,
            "model_name": self.model_name,
            "model_identity": self.model_identity,
            "seconds": self.seconds,
            "seconds_per_step": self.seconds_per_step,
            "model_evaluations": self.model_evaluations,
            "metrics": self.metrics,
            "stats": self.stats,
            "device": self.device,
            "dtype": self.dtype,
            "versions": self.versions,
            "error": self.error,
            "favourite": bool(self.favourite),
            "notes": self.notes,
            "pid": self.pid,
            "host": self.host,
            "origin": self.origin,
            "sweep": self.sweep,
            "parent_id": self.parent_id,
            "request": self.request,
            "outputs": [o.to_dict() for o in self.outputs],
        }


class Output(Base):
    __tablename__ = "outputs"
    __table_args__ = (Index("ix_outputs_run_id", "run_id"),)

    id: Mapped[int] = mapped_column(INT, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    # Relative to the data directory when inside it (the directory can move), absolute otherwise.
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(INT)

    run: Mapped[Run] = relationship(back_populates="outputs")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "sha256": self.sha256, "size": self.size}


class OutputBlob(Base):
    """Schema 3: an output's bytes, kept in the database by a shared (PostgreSQL) history that has no output
    directory every host sees (docs/history.md, "A shared history"). Never loaded with the Output."""

    __tablename__ = "output_blobs"

    output_id: Mapped[int] = mapped_column(ForeignKey("outputs.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)

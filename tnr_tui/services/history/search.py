"""Prompt search at scale: the search key, the SQLite full-text indexes and the page query over them.

What a search means never changed: a run matches text T when T is a substring of its prompt or its negative
prompt, ASCII letters compared case-insensitively (SQLite's LIKE; PostgreSQL is given the same rule, see
queries.py). The indexes only find candidates faster; every candidate is checked with that same LIKE, so an
index that finds more (the trigram tokenizer folds non-ASCII case too) never changes a result.

SQLite (schema 3, migrations.py):
- `runs_fts`: FTS5 with the trigram tokenizer over prompt and negative_prompt (external content: the runs
  table). A text of 3 characters or more is a phrase query there: substring semantics.
- `runs_grams`: FTS5 (unicode61, contentless, detail=none: row ids only) over one token per distinct
  character and pair of characters of the two prompts, ASCII-lowercased, written as the hex of their UTF-8
  (`grams_v1`). A text of 1 or 2 characters is one token there. Trigram indexes cannot answer those; a
  scan could, but a rare one costs a full scan (about 1 s at 1 000 000 runs).
- Triggers keep both in step with every insert, delete and update of a prompt (`finish_run` rewrites the
  prompt columns; imports insert). `runs_grams`'s trigger calls the SQL function `tnr_grams_v1`, which the
  store registers on each connection: another SQLite client can read the history, but writing the runs
  table from it fails ("no such function") rather than leave the index out of step.

Order: a full-text index returns row ids in its own rowid order, so its rowid is `runs.search_key`, which
orders like the run id to the second (ids are ULIDs, creation time first): key = second * 1024 + slot, the
slot free in that second (the id's low random bits first). Reading the index newest key first and stopping
after one page is then exact once the rest of the last page's second is read too (`page_ids`). A second
that already holds 1024 runs puts the next ones in the overflow pool (negative keys), which every query
reads whole; it is empty unless more than 1024 runs share one second.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import BigInteger, Select, and_, column, func, literal_column, select, table, text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Join

from tnr_tui.services.history.models import Run

SLOTS = 1024  # keys per second of run ids
BLOCK_MS = 1000
GRAMS_FUNCTION = "tnr_grams_v1"
# A string of this length or more goes to the trigram index; shorter ones to the character-pair index.
TRIGRAM = 3

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """Lowercase ASCII letters only: the case rule of SQLite's LIKE (and of the search everywhere)."""
    return text.translate(_ASCII_LOWER)


@functools.lru_cache(maxsize=1 << 16)
def _hex(gram: str) -> str:
    # Cached: a history's characters and pairs are a small vocabulary, met again in every prompt.
    return gram.encode("utf-8", "surrogatepass").hex()


def grams_v1(prompt: str | None, negative_prompt: str | None) -> str:
    """The `runs_grams` text of a run: every distinct character and character pair of each prompt (pairs do
    not span the two), ASCII-lowercased, as hex tokens, sorted. Frozen: rows already indexed are deleted
    from the contentless index by recomputing exactly this, so a change needs a new function and migration.

    Hex of UTF-8 is unambiguous (UTF-8 decodes one way), so a character's token never equals a pair's."""
    grams: set[str] = set()
    for value in (prompt, negative_prompt):
        if not value:
            continue
        low = ascii_lower(value)
        grams.update(low)
        grams.update(map(operator.add, low, low[1:]))  # the pairs (the C loop of map: 3x faster)
    return " ".join(sorted(map(_hex, grams)))


def register_functions(dbapi_connection: Any) -> None:
    """Make `tnr_grams_v1` known to a sqlite3 connection (every connection the store opens)."""
    dbapi_connection.create_function(GRAMS_FUNCTION, 2, grams_v1, deterministic=True)


# ---- keys ----------------------------------------------------------------------------------------------


_ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
# Crockford's base-32 digits as int(..., 32) reads them (0-9, a-v).
_TO_BASE32 = str.maketrans("ABCDEFGHJKMNPQRSTVWXYZ", "abcdefghijklmnopqrstuv")


def key_block(run_id: str) -> int | None:
    """The second a run id was made in (its key block), or None for an id that is not a ULID (ids.py's
    format; decoded with int(), not character by character: imports ask this for every run)."""
    if not _ULID.fullmatch(run_id):
        return None
    return int(run_id[:10].translate(_TO_BASE32), 32) // BLOCK_MS


def _preferred_slot(run_id: str) -> int:
    # The id's last two characters are its lowest 10 random bits: ids one process makes within one
    # millisecond count up there, so they land in different slots.
    return int(run_id[-2:].translate(_TO_BASE32), 32)


def plan_keys(ids: Iterable[str], taken: set[int], lowest: Callable[[], int]) -> dict[str, int]:
    """Keys for new run ids given the keys already `taken` in their seconds (updated in place); `lowest()`
    gives the lowest key in use (the overflow pool grows downwards from -1), asked only when one is needed."""
    keys: dict[str, int] = {}
    overflow: list[str] = []
    for run_id in ids:
        block = key_block(run_id)
        if block is None:
            overflow.append(run_id)
            continue
        start, slot = block * SLOTS, _preferred_slot(run_id)
        for probe in range(SLOTS):
            candidate = start + (slot + probe) % SLOTS
            if candidate not in taken:
                keys[run_id] = candidate
                taken.add(candidate)
                break
        else:
            overflow.append(run_id)  # 1024 runs already in this second
    if overflow:
        low = min(lowest(), 0)
        for run_id in overflow:
            low -= 1
            keys[run_id] = low
    return keys


def allocate_keys(session: Session, ids: Sequence[str]) -> dict[str, int]:
    """A free search key for each new run id, inside the caller's write transaction: one query for the
    preferred slots, one per second where one of them is taken. The caller holds the history's write lock
    (SQLite) or the key lock (PostgreSQL: `lock_keys`), so no other writer takes the same key meanwhile."""
    preferred = {}
    for run_id in ids:
        block = key_block(run_id)
        if block is not None:
            preferred[run_id] = block * SLOTS + _preferred_slot(run_id)
    taken: set[int] = set()
    wanted = sorted(set(preferred.values()))
    for i in range(0, len(wanted), 500):
        taken.update(session.scalars(select(Run.search_key).where(Run.search_key.in_(wanted[i : i + 500]))).all())
    # A second where a preferred slot is taken (or wanted twice): read all its keys, then probe in memory.
    counts: dict[int, int] = {}
    for key in preferred.values():
        counts[key] = counts.get(key, 0) + 1
    crowded = {key // SLOTS for key, n in counts.items() if n > 1 or key in taken}
    for block in sorted(crowded):
        taken.update(
            session.scalars(
                select(Run.search_key).where(Run.search_key >= block * SLOTS, Run.search_key < (block + 1) * SLOTS)
            ).all()
        )

    def lowest() -> int:
        value = session.scalar(select(func.min(Run.search_key)))
        return int(value) if value is not None else 0

    return plan_keys(ids, taken, lowest)


def lock_keys(session: Session) -> None:
    """PostgreSQL: serialise key allocation between writers (a transaction-scoped advisory lock)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_KEYS})


ADVISORY_KEYS = 0x746E726B  # "tnrk": the key-allocation lock
ADVISORY_MIGRATE = 0x746E726D  # "tnrm": the migration lock


# ---- queries (SQLite) -------------------------------------------------------------------------------------


def fts_match(needle: str) -> tuple[str, str]:
    """(table, MATCH expression) of the SQLite index that finds candidates for a substring `needle`."""
    if len(needle) >= TRIGRAM:
        return "runs_fts", '"' + needle.replace('"', '""') + '"'
    return "runs_grams", '"' + _hex(ascii_lower(needle)) + '"'


class _CrossJoin(Join):
    """`A CROSS JOIN B ON ...`: SQLite never reorders a CROSS JOIN, so the index stays the outer loop."""

    inherit_cache = True


@compiles(_CrossJoin)
def _compile_cross_join(join: _CrossJoin, compiler: Any, **kw: Any) -> str:
    kw["asfrom"] = True
    left = compiler.process(join.left, **kw)
    right = compiler.process(join.right, **kw)
    kw.pop("asfrom")
    return f"{left} CROSS JOIN {right} ON {compiler.process(join.onclause, **kw)}"


def _index(name: str) -> Any:
    return table(name, column("rowid", BigInteger))


def _matching(what: Any, needle: str, conditions: Iterable[Any]) -> tuple[Select[Any], Any]:
    name, match = fts_match(needle)
    index = _index(name)
    joined = _CrossJoin(index, Run.__table__, Run.search_key == index.c.rowid)
    query = select(*what).select_from(joined).where(literal_column(name).op("MATCH")(match), *conditions)
    return query, index.c.rowid


def page_ids(session: Session, needle: str, conditions: list[Any], after: str | None, limit: int) -> list[str]:
    """The ids of one page of runs matching `needle` and `conditions` (the LIKE check among them), newest first,
    older than `after`: exactly what `ORDER BY id DESC LIMIT limit` over all runs gives, read from the index
    newest key first (CROSS JOIN keeps SQLite from starting anywhere else)."""
    query, rowid = _matching((Run.id, Run.search_key), needle, conditions)
    query = query.order_by(rowid.desc())
    if after is not None:
        query = query.where(Run.id < after)
        block = key_block(after)
        if block is not None:
            query = query.where(rowid < (block + 1) * SLOTS)
    first = session.execute(query.where(rowid >= 0).limit(limit)).all()
    found = {run_id: key for run_id, key in first}
    if len(first) == limit:
        # The page ends inside some second: the rest of that second may hold newer ids. (An index probe
        # first: most seconds hold one run, and the full-text query costs more than the probe.)
        last_key = first[-1][1]
        start = last_key - last_key % SLOTS
        inside = and_(Run.search_key >= start, Run.search_key < last_key)
        if session.scalar(select(Run.search_key).where(inside).limit(1)) is not None:
            found.update(session.execute(query.where(and_(rowid >= start, rowid < last_key))).all())
    if (session.scalar(select(func.min(Run.search_key))) or 0) < 0:
        found.update(session.execute(query.where(rowid < 0)).all())  # the overflow pool (normally empty)
    return sorted(found, reverse=True)[:limit]


def count_matching(session: Session, needle: str, conditions: list[Any]) -> int:
    query, _ = _matching((func.count(),), needle, conditions)
    return int(session.scalar(query) or 0)

"""Prompt search through the full-text indexes (issue 16, part 4) gives exactly today's substring search.

The reference is written here in Python: a run matches when the text is a substring of its prompt or its
negative prompt with ASCII letters compared case-insensitively (SQLite's LIKE, which the search used to be),
newest first. A generated history holds the hard cases: punctuation, case, non-ASCII case pairs (which LIKE
does not fold and the trigram tokenizer does), LIKE's own % _ and \\, quotes (FTS5's syntax), one- and
two-character queries (below the trigram), many runs in one second (the key's slots, and more than 1024:
the overflow pool), imports of older runs, prompts rewritten by finish_run, deletes.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from tnr_tui.services.history import RunFilter, open_store
from tnr_tui.services.history.ids import new_run_id
from tnr_tui.services.history.paths import DB_NAME
from tnr_tui.services.history.search import SLOTS, ascii_lower, grams_v1

WORDS = [
    "red", "Circle", "ÉCLAIR", "éclair", "a_b", "50%", "100%_off", "x\\y", "日本語", "ß", "SS", "q", "zz",
    '"quoted"', "it's", "İstanbul", "istanbul", "ǅ", "Ω", "ω", "emoji🙂", "tab\there", "new\nline", "NUL-free",
    "(a:1.2)", "[b]", "{c}", "*", "^$", "--", "AND", "OR", "NOT", "NEAR", "e\u0301", "é",
]  # fmt: skip
QUERIES = [
    "", "r", "R", "e", "é", "É", "Ω", "ω", "ß", "s", "日", "本語", "🙂", " ", "\t", "\n", "%", "_", "\\", '"', "'",
    "*", "a_", "_b", "0%", "%_", "x\\", "\\y", "zz", "zzz", "q ", "ci", "CI", "red", "RED", "rEd c", "circle",
    "éclair", "ÉCLAIR", "eclair", "50%", "100%_", '"quo', 'ted"', "it's", "İst", "ist", "stan", "AND", "and OR",
    "NEAR", "(a:1", "[b]", "{c}", "^$", "---", "e\u0301", "absent", "a red circle that is nowhere", "ǅ",
    "blurry", "BLUR", "ugly_h",
]  # fmt: skip


def reference(runs: dict[str, tuple[str, str]], needle: str) -> list[str]:
    low = ascii_lower(needle)
    hits = [rid for rid, (p, n) in runs.items() if low in ascii_lower(p) or low in ascii_lower(n)]
    return sorted(hits, reverse=True)


def prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 5)))


def all_pages(store, filters: RunFilter, size: int) -> list[str]:
    ids, after = [], None
    while True:
        page = store.list_runs(filters, after=after, limit=size)
        ids += [r.id for r in page]
        if len(page) < size:
            return ids
        after = page[-1].id


def fill(store, rng: random.Random, n: int, *, same_second: bool = False) -> dict[str, tuple[str, str]]:
    runs = {}
    base_ms = 1_760_000_000_000
    for i in range(n):
        # Many runs per second (ids one process makes in one millisecond count up), and some seconds apart.
        ms = base_ms + (0 if same_second else (i // 7) * 1000 + i % 3)
        run_id = new_run_id(now_ms=ms)
        p, neg = prompt(rng), rng.choice(["", "blurry", "Ugly_HANDS", "ß"])
        store.create_run(
            {"prompt": p, "negative_prompt": neg, "solver": "euler", "guidance": "cfg", "steps": 2, "seed": i},
            run_id=run_id,
        )
        runs[run_id] = (p, neg)
    return runs


def check(store, runs: dict[str, tuple[str, str]], queries=QUERIES, sizes=(50, 7)) -> None:
    for q in queries:
        want = reference(runs, q) if q else sorted(runs, reverse=True)
        for size in sizes:
            assert all_pages(store, RunFilter(text=q or None), size) == want, (q, size)
        assert store.count_runs(RunFilter(text=q or None)) == len(want), q


def fts_intact(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO runs_fts (runs_fts) VALUES ('integrity-check')")
    keys = {k for (k,) in conn.execute("SELECT search_key FROM runs")}
    assert None not in keys
    conn.close()


def test_index_search_equals_substring_search_on_a_generated_history(tmp_path: Path) -> None:
    rng = random.Random(16)
    with open_store(tmp_path) as store:
        runs = fill(store, rng, 400)
        check(store, runs)
        # Combined with other filters, and a page that starts after a given id.
        half = sorted(runs)[len(runs) // 2]
        for q in ("e", "red", "a_b", "zz"):
            want = [rid for rid in reference(runs, q) if rid < half]
            assert [r.id for r in store.list_runs(RunFilter(text=q), after=half, limit=1000)] == want
            filtered = store.list_runs(RunFilter(text=q, status="running", solver="euler"), limit=1000)
            assert [r.id for r in filtered] == reference(runs, q)
            assert store.list_runs(RunFilter(text=q, status="done")) == []
    fts_intact(tmp_path / DB_NAME)


def test_more_runs_in_one_second_than_it_has_keys_go_to_the_overflow_pool(tmp_path: Path) -> None:
    rng = random.Random(3)
    with open_store(tmp_path) as store:
        runs = fill(store, rng, SLOTS + 40, same_second=True)
        keys = store._reading(
            lambda s: [k for (k,) in s.execute(__import__("sqlalchemy").text("SELECT search_key FROM runs"))]
        )
        assert len(set(keys)) == len(keys) == SLOTS + 40
        assert sum(k < 0 for k in keys) == 40  # the 41st run past 1024 in one second, and on
        check(store, runs, queries=["e", "red", "zz", "q", "ß", "absent"], sizes=(50, 13))
    fts_intact(tmp_path / DB_NAME)


def test_the_index_follows_updates_deletes_and_imports(tmp_path: Path) -> None:
    from tnr_tui.services.history.transfer import export_runs, import_runs

    rng = random.Random(5)
    with open_store(tmp_path / "a") as store:
        runs = fill(store, rng, 120)
        # finish_run rewrites the prompt columns (the resolved request): the index must follow.
        for rid in list(runs)[:30]:
            p, neg = prompt(rng), "rewritten NEG"
            req = {"prompt": p, "negative_prompt": neg, "solver": "euler", "guidance": "cfg", "steps": 2, "seed": 1}
            store.finish_run(rid, "done", request=req)
            runs[rid] = (p, neg)
        store.set_note(list(runs)[40], "notes do not touch the index")
        for rid in list(runs)[50:70]:
            store.delete_run(rid)
            del runs[rid]
        check(store, runs, queries=["rewritten", "NEG", "e", "red", "ß", "zz", "absent"])
        export_runs(store, "jsonl", tmp_path / "all.jsonl")
    # An import into another history, beside runs newer than every imported one (imports insert old ids).
    with open_store(tmp_path / "b") as other:
        newer = fill(other, random.Random(9), 30)
        import_runs(other, tmp_path / "all.jsonl")
        both = {**runs, **newer}
        check(other, both, queries=["rewritten", "e", "red", "日", "ß", "absent"], sizes=(50, 9))
    fts_intact(tmp_path / "a" / DB_NAME)
    fts_intact(tmp_path / "b" / DB_NAME)


def test_an_older_history_is_indexed_when_it_is_migrated(tmp_path: Path) -> None:
    from tnr_tui.services.history.migrations import migrate

    conn = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    assert migrate(conn, target=2) == [1, 2]
    rng = random.Random(7)
    runs = {}
    for i in range(150):
        rid = new_run_id(now_ms=1_700_000_000_000 + (i // 4) * 1000)
        p = prompt(rng)
        conn.execute(
            "INSERT INTO runs (id, created_at, status, request_json, prompt, negative_prompt, model, solver,"
            " guidance, steps, seed, schedule, favourite, notes, origin) VALUES (?, '2024-01-01 00:00:00', 'done',"
            " '{}', ?, '', 'embedded', 'euler', 'cfg', 2, 0, 'default', 0, '', 'cli')",
            (rid, p),
        )
        runs[rid] = (p, "")
    conn.close()
    with open_store(tmp_path) as store:  # migrates to the latest schema: keys assigned, indexes built
        check(store, runs, queries=["e", "red", "zz", "ß", "日本", "%", "absent"])
        runs.update(fill(store, rng, 20))
        check(store, runs, queries=["e", "red", "absent"])
    fts_intact(tmp_path / DB_NAME)


def test_another_sqlite_client_can_read_but_not_write_around_the_index(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        fill(store, random.Random(1), 5)
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 5
    with pytest.raises(sqlite3.OperationalError, match="tnr_grams_v1"):
        conn.execute("DELETE FROM runs")  # the trigger needs the store's function: refused, not out of step
    conn.close()


def test_grams_are_every_character_and_pair_in_hex() -> None:
    assert grams_v1("Ab", "") == " ".join(sorted(["61", "62", "6162"]))
    assert grams_v1("", None) == ""
    # Pairs never span the two prompts; a character's token never equals a pair's (UTF-8 decodes one way).
    assert "6263" not in grams_v1("ab", "cd").split()
    assert grams_v1("é", "").split() == ["c3a9"]


@pytest.mark.parametrize("query", ["e", "red", "zzz"])
def test_the_page_query_reads_the_index_newest_first(tmp_path: Path, query: str) -> None:
    """The plan: the index is the outer loop in rowid order (no sort of all matches), runs found by key."""
    from sqlalchemy import text

    from tnr_tui.services.history.search import fts_match

    with open_store(tmp_path) as store, store.engine.connect() as conn:
        name, match = fts_match(query)
        plan = conn.execute(
            text(
                f"EXPLAIN QUERY PLAN SELECT runs.id FROM {name} CROSS JOIN runs ON runs.search_key = {name}.rowid "
                f"WHERE {name} MATCH :m AND runs.guidance = 'cfg' ORDER BY {name}.rowid DESC LIMIT 50"
            ),
            {"m": match},
        ).all()
        details = [row[-1] for row in plan]
        assert details[0].startswith(f"SCAN {name} VIRTUAL TABLE"), details
        assert any("ix_runs_search_key" in d for d in details), details
        assert not any("TEMP B-TREE" in d for d in details), details

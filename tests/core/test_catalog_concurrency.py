"""Many processes write one catalog at once, and compaction changes no answer.

pytest tests/core/test_catalog_concurrency.py
"""

import multiprocessing
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from flywheel.core import catalog_store
from flywheel.core.catalog import Catalog, CycleRun, Decision

WORKERS, WRITES = 4, 50
SOURCES, CYCLES = 3, 2  # keys each worker replaces over and over
AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _docs(tag: str, source: str) -> pl.DataFrame:
    ids = [f"{tag}-d{n}" for n in range(3)]
    return pl.DataFrame(
        {
            "doc_id": ids,
            "source": [source] * 3,
            "source_id": ids,
            "path": [f"/{tag}.jsonl"] * 3,
            "offset": [0, 1, 2],
            "content_hash": ids,
            "n_chars": [10] * 3,
            "shard": ["s0"] * 3,
        }
    )


def _quarantine(tag: str, source: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "source": [source],
            "path": [f"/{tag}.jsonl"],
            "offset": [9],
            "reason": ["invalid_json"],
            "detail": [tag],
            "raw": ["{"],
        }
    )


def _generations(tag: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "generation_id": [f"{tag}-g{n}" for n in range(4)],
            "prompt_id": ["p"] * 4,
            "checkpoint": [tag] * 4,
            "status": ["accepted", "rejected"] * 2,
            "reason": [None, "incorrect"] * 2,
        }
    )


def _write(cat: Catalog, worker: int, j: int) -> None:
    """Write ``j`` of ``worker``: five kinds in turn, four of them replacing a key."""
    tag = f"w{worker}-j{j}"
    kind = j % 5
    if kind == 0:  # documents + quarantine of one source, in one write
        source = f"w{worker}-src{(j // 5) % SOURCES}"
        cat.record_source(source, _docs(tag, source), _quarantine(tag, source), tag)
    elif kind == 1:  # a cycle's generations
        cat.record_generations(worker * 100 + (j // 5) % CYCLES, _generations(tag), tag)
    elif kind == 2:  # a run: a new key each time
        cat.record_cycle_run(CycleRun(f"run-{tag}", worker, "failed", tag, AT, "step"))
    elif kind == 3:  # the worker's own cycle decided again
        cat.record_decision(Decision(worker, tag, "/c", "acc", j, None, None, True, "r", AT))
    elif j % 10 == 4:  # one eval version that every worker replaces: one write wins whole
        cat.record_eval(tag, "shared", {f"m{n}": float(j) for n in range(worker + 1)})
    else:  # append-only
        cat.record_materialization("product", tag, "f", {"j": j})


def _writer(path: Path, worker: int, start: float) -> None:
    cat = Catalog.open(path)
    while time.time() < start:  # all workers begin together
        time.sleep(0.005)
    for j in range(WRITES):
        _write(cat, worker, j)


def _last(kind: int, key_of_j, key) -> int:
    return max(j for j in range(WRITES) if j % 5 == kind and key_of_j(j) == key)


def _check_consistent(cat: Catalog) -> int:
    """What must hold at any moment, even while writers run (each check is one query, so one
    snapshot of the catalog); returns the runs seen."""
    sources = cat.query(
        """
        SELECT d.n, d.v, q.n AS qn, q.detail = d.version AS same_write
        FROM (SELECT source, count(*) AS n, count(DISTINCT version) AS v,
                     any_value(version) AS version FROM documents GROUP BY source) d
        FULL JOIN (SELECT source, count(*) AS n, any_value(detail) AS detail
                   FROM quarantine GROUP BY source) q USING (source)
        """
    )
    # a source's documents and quarantine are one write's: all of it, never half
    assert sources.to_dicts() == [{"n": 3, "v": 1, "qn": 1, "same_write": True}] * sources.height
    gens = cat.query(
        "SELECT count(*) AS n, count(DISTINCT accepted_version) AS v FROM generations "
        "GROUP BY cycle"
    )
    assert gens.to_dicts() == [{"n": 4, "v": 1}] * gens.height
    shared = cat.query("SELECT checkpoint, count(*) AS n FROM eval_scores GROUP BY checkpoint")
    if shared.height:  # one writer's whole set of metrics: worker w writes w + 1 of them
        assert shared.height == 1
        assert shared["n"][0] == int(shared["checkpoint"][0].split("-")[0][1:]) + 1
    runs = cat.query("SELECT count(*) AS n, count(DISTINCT run_id) AS d FROM cycle_runs")
    assert runs["n"][0] == runs["d"][0]
    decided = [d.cycle for d in cat.decisions()]
    assert len(set(decided)) == len(decided)
    return int(runs["n"][0])


def test_processes_write_at_once_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "catalog.duckdb"
    cat = Catalog.open(path)
    spawn = multiprocessing.get_context("spawn")
    start = time.time() + 3.0  # time for the spawned interpreters to import
    workers = [spawn.Process(target=_writer, args=(path, w, start)) for w in range(WORKERS)]
    for p in workers:
        p.start()
    seen, errors, reads = [0], [], [0]

    def read_while_writing() -> None:
        while any(p.is_alive() for p in workers):
            try:
                runs = _check_consistent(cat)
                assert runs >= seen[-1], "a run that was visible disappeared"
                seen.append(runs)
                reads[0] += 1
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)
                return

    reader = threading.Thread(target=read_while_writing)
    reader.start()
    for p in workers:
        p.join(240)
    reader.join(60)
    assert [p.exitcode for p in workers] == [0] * WORKERS
    assert not errors, errors[0]
    assert reads[0] > 0

    assert _check_consistent(cat) == WORKERS * WRITES // 5
    for w in range(WORKERS):
        for s in range(SOURCES):
            last = _last(0, lambda j: (j // 5) % SOURCES, s)
            rows = cat.query(
                "SELECT doc_id FROM documents WHERE source = ? ORDER BY doc_id", [f"w{w}-src{s}"]
            )
            assert rows["doc_id"].to_list() == [f"w{w}-j{last}-d{n}" for n in range(3)]
        for c in range(CYCLES):
            last = _last(1, lambda j: (j // 5) % CYCLES, c)
            rows = cat.query(
                "SELECT DISTINCT accepted_version AS v FROM generations WHERE cycle = ?",
                [w * 100 + c],
            )
            assert rows["v"].to_list() == [f"w{w}-j{last}"]
    assert [d.candidate for d in cat.decisions()] == [f"w{w}-j48" for w in range(WORKERS)]
    materialized = cat.query("SELECT version FROM materializations")["version"].to_list()
    expected = [f"w{w}-j{j}" for w in range(WORKERS) for j in range(WRITES) if j % 10 == 9]
    assert sorted(materialized) == sorted(expected)
    # writers compacted on their own: far fewer commits than the 200 writes
    assert len(list((tmp_path / "catalog.duckdb.d" / "_commits").iterdir())) < WORKERS * WRITES


def _everything(cat: Catalog) -> dict[str, pl.DataFrame]:
    return {t: cat.query(f"SELECT * FROM {t}").sort(pl.all()) for t in cat._store.tables}


def test_compaction_keeps_every_answer(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(catalog_store, "COMPACT_AFTER", 10_000)  # only the explicit compact
    cat = Catalog.open(tmp_path / "catalog.duckdb")
    for worker in range(2):
        for j in range(30):
            _write(cat, worker, j)
    before = _everything(cat)
    assert before["documents"].height == 2 * SOURCES * 3 and before["eval_scores"].height
    assert cat.compact()
    root = tmp_path / "catalog.duckdb.d"
    assert len(list((root / "_commits").iterdir())) == 1
    for table, rows in _everything(cat).items():
        assert_frame_equal(rows, before[table])
        assert len(list((root / table).glob("*.parquet"))) <= 1  # one fragment, or none
    assert not cat.compact()  # nothing left to fold
    # replacing a key after compaction hides the compacted rows of that key
    cat.record_source("w0-src0", _docs("late", "w0-src0"), _quarantine("late", "w0-src0"), "v9")
    rows = cat.query("SELECT DISTINCT version FROM documents WHERE source = 'w0-src0'")
    assert rows["version"].to_list() == ["v9"]
    assert cat.query("SELECT count(*) AS n FROM documents")["n"][0] == 2 * SOURCES * 3


def test_a_read_racing_a_compaction_lists_again(tmp_path: Path, monkeypatch) -> None:
    """A compaction that ends between a reader's listing of commits and of fragments deletes
    the fragments the reader was about to read: the reader must notice and list again."""
    cat = Catalog.open(tmp_path / "catalog.duckdb")
    for j in range(5):
        cat.record_cycle_run(CycleRun(f"run-{j}", j, "failed", "boom", AT))
    listing, raced = catalog_store.FragmentStore._listing, []

    def compaction_in_between(self, visible, tables):  # the interleaving, made certain
        if not raced:
            raced.append(True)
            assert cat.compact()
        return listing(self, visible, tables)

    monkeypatch.setattr(catalog_store.FragmentStore, "_listing", compaction_in_between)
    assert cat.query("SELECT count(*) AS n FROM cycle_runs")["n"][0] == 5 and raced

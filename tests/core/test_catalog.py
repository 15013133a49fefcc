from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from flywheel.core import catalog as catalog_module
from flywheel.core.catalog import Catalog, CycleRun, Decision


def _docs(source: str, ids: list[str]) -> pl.DataFrame:
    n = len(ids)
    return pl.DataFrame(
        {
            "doc_id": ids,
            "source": [source] * n,
            "source_id": ids,
            "path": ["/x.jsonl"] * n,
            "offset": list(range(n)),
            "content_hash": ids,
            "n_chars": [10] * n,
            "shard": ["s0"] * n,
        }
    )


def _quarantine(source: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "source": [source],
            "path": ["/x.jsonl"],
            "offset": [99],
            "reason": ["invalid_json"],
            "detail": ["bad"],
            "raw": ["b'{'"],
        }
    )


def test_lineage_of_kept_dropped_and_duplicate(tmp_path: Path) -> None:
    cat = Catalog.open(tmp_path / "c.duckdb")
    cat.record_source("web", _docs("web", ["a", "b", "c", "d"]), _quarantine("web"), "v1")
    cat.record_filter_decisions(
        pl.DataFrame(
            {
                "id": ["a", "b", "c", "d"],
                "kept": [True, False, True, True],
                "filter": [None, "gopher_quality", None, None],
                "reason": [None, "word_count 3 < 20", None, None],
            }
        ),
        "f1",
    )
    cat.record_dedup(
        pl.DataFrame({"id": ["a", "d"], "shard": ["k0", "k0"]}),
        pl.DataFrame(
            {"id": ["c"], "duplicate_of": ["a"], "method": ["minhash"], "similarity": [0.91]}
        ),
        "d1",
    )
    assert cat.document_lineage("a")["status"] == "kept in k0"
    assert cat.document_lineage("a")["cluster"] == ["a", "c"]
    assert (
        cat.document_lineage("b")["status"] == "dropped by filter gopher_quality: word_count 3 < 20"
    )
    c = cat.document_lineage("c")
    assert c["status"] == "removed as near-duplicate of a by minhash dedup (similarity 0.910)"
    assert c["source"] == "web" and c["offset"] == 2
    assert c["duplicate_of_origin"] == {"source": "web", "source_id": "a", "path": "/x.jsonl"}
    with pytest.raises(KeyError, match="not in the catalog"):
        cat.document_lineage("zzz")
    assert cat.counts()["quarantine"] == 1


def test_rerecording_a_source_replaces_only_its_rows(tmp_path: Path) -> None:
    cat = Catalog.open(tmp_path / "c.duckdb")
    cat.record_source("web", _docs("web", ["a", "b"]), _quarantine("web"), "v1")
    cat.record_source("books", _docs("books", ["x"]), _quarantine("books").head(0), "v1")
    cat.record_source("web", _docs("web", ["a"]), _quarantine("web"), "v2")
    rows = cat.query("SELECT doc_id, version FROM documents ORDER BY doc_id")
    assert rows["doc_id"].to_list() == ["a", "x"]
    assert rows["version"].to_list() == ["v2", "v1"]
    assert cat.counts()["quarantine"] == 1


def test_failed_write_rolls_back(tmp_path: Path) -> None:
    cat = Catalog.open(tmp_path / "c.duckdb")
    cat.record_source("web", _docs("web", ["a"]), _quarantine("web"), "v1")
    bad = _docs("web", ["a", "a"])  # violates the primary key
    with pytest.raises(duckdb.ConstraintException):
        cat.record_source("web", bad, _quarantine("web"), "v2")
    assert cat.query("SELECT version FROM documents")["version"].to_list() == ["v1"]


def test_a_duckdb_catalog_is_migrated_once_and_a_stranger_file_refused(tmp_path: Path) -> None:
    """Catalogs from before fragments were one DuckDB file: the first open copies its tables
    into fragments and keeps the file aside; anything else at the path is refused."""
    path = tmp_path / "c.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(catalog_module.SCHEMA)
        con.execute("INSERT INTO documents (doc_id, source, version) VALUES ('a', 'web', 'v1')")
    cat = Catalog.open(path)
    assert cat.query("SELECT doc_id, version FROM documents").to_dicts() == [
        {"doc_id": "a", "version": "v1"}
    ]
    assert (tmp_path / "c.duckdb.migrated").exists() and path.read_text().startswith("{")
    catalog_module._OPENED.clear()  # as a new process would: the marker is there, no migration
    cat = Catalog.open(path)
    cat.record_source("books", _docs("books", ["x"]), _quarantine("books"), "v1")
    assert cat.query("SELECT doc_id FROM documents ORDER BY 1")["doc_id"].to_list() == ["a", "x"]
    stranger = tmp_path / "notes.txt"
    stranger.write_text("my notes")
    with pytest.raises(ValueError, match="notes.txt is not a flywheel catalog"):
        Catalog.open(stranger)


def test_checkpoint_lineage_follows_parents_to_documents(tmp_path: Path) -> None:
    cat = Catalog.open(tmp_path / "c.duckdb")
    spans = pl.DataFrame(
        {
            "id": ["a", "b", "c"],
            "split": ["train", "train", "heldout"],
            "seq_start": [0, 1, 0],
            "seq_end": [1, 3, 0],
            "tokens": [40, 90, 10],
        }
    )
    cat.record_tokenized(spans, "tok-v1")
    cat.record_tokenized(spans, "tok-v1")  # re-recording a version replaces it
    inputs = {"tokenized_dataset": "tok-v1", "tokenizer": "bpe-v1"}
    cat.record_checkpoint("pre-1", "pretrain", tmp_path / "p", None, inputs, {"loss": 3.0}, "f")
    cat.record_checkpoint("sft-1", "sft", tmp_path / "s", "pre-1", {"sft_data": "x"}, {}, "f")
    facts = cat.checkpoint_lineage("sft-1")
    assert [r["checkpoint"] for r in facts["chain"]] == ["sft-1", "pre-1"]
    assert facts["chain"][1]["metrics"] == {"loss": 3.0}
    assert facts["training_documents"] == {"tok-v1": 2}
    assert cat.training_documents("tok-v1")["doc_id"].to_list() == ["a", "b"]
    with pytest.raises(KeyError, match="not in the catalog"):
        cat.checkpoint_lineage("nope")


def test_eval_scores_are_replaced_per_eval_version(tmp_path: Path) -> None:
    cat = Catalog.open(tmp_path / "c.duckdb")
    cat.record_eval("sft-1", "e1", {"perplexity": 12.5, "accuracy/arith": 0.25})
    cat.record_eval("sft-1", "e1", {"perplexity": 11.0})
    rows = cat.query("SELECT metric, value FROM eval_scores WHERE eval_version = 'e1'")
    assert rows.to_dicts() == [{"metric": "perplexity", "value": 11.0}]


def test_open_is_one_handle_per_process_and_path(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "c.duckdb"
    first = Catalog.open(path)
    assert Catalog.open(str(path)) is first and Catalog.open(tmp_path / "d.duckdb") is not first
    with pytest.raises(TypeError, match="Catalog.open"):
        Catalog(path)
    monkeypatch.setattr(catalog_module, "SCHEMA", "THIS IS NOT SQL;")
    assert Catalog.open(path) is first  # the schema is not run again in this process
    monkeypatch.undo()
    path.unlink()  # removed: the next open creates it again, with its schema
    again = Catalog.open(path)
    assert again is not first and again.counts()["documents"] == 0


def test_threads_read_and_write_through_one_handle(tmp_path: Path) -> None:
    """DuckDB refuses a read-only and a read-write connection to one file at once in a
    process: the handle's lock keeps sensor threads from tripping over each other."""
    cat = Catalog.open(tmp_path / "c.duckdb")
    now = datetime.now(UTC)

    def work(i: int) -> int:
        if i % 2:
            cat.record_cycle_run(CycleRun(f"run-{i}", i, "failed", "boom", now))
        return len(cat.cycle_runs())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(40)))
    assert len(cat.cycle_runs()) == 20


def test_a_forked_process_gets_its_own_handle(tmp_path: Path) -> None:
    import multiprocessing

    cat = Catalog.open(tmp_path / "c.duckdb")
    child = multiprocessing.get_context("fork").Process(target=_record_in_child, args=(cat.path,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert [r.run_id for r in cat.cycle_runs()] == ["child"]


def _record_in_child(path: Path) -> None:
    cat = Catalog.open(path)
    cat.record_cycle_run(CycleRun("child", 1, "succeeded", "", datetime.now(UTC)))


def test_decisions_round_trip_in_utc_and_replace_per_cycle(tmp_path: Path, monkeypatch) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")  # a local zone must not shift the times
    time.tzset()
    try:
        cat = Catalog.open(tmp_path / "c.duckdb")
        at = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
        zero = Decision(0, "v-a", "/a", "acc", 0.5, None, None, True, "first champion", at)
        one = Decision(1, "v-b", "/b", "acc", 0.4, "v-a", 0.5, False, "worse", at)
        for d in (one, zero):
            cat.record_decision(d)
        assert cat.decisions() == [zero, one]
        redone = Decision(1, "v-c", "/c", "acc", 0.7, "v-a", 0.5, True, "better", at)
        cat.record_decision(redone)
        assert cat.decisions() == [zero, redone]
        stored = cat.query("SELECT decided_at FROM cycles WHERE cycle = 0")["decided_at"][0]
        assert stored == at.replace(tzinfo=None)  # UTC wall time in the table
    finally:
        monkeypatch.undo()
        time.tzset()


def test_decisions_record_their_inputs_and_old_catalogs_gain_the_column(tmp_path: Path) -> None:
    import duckdb

    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:  # the table as a catalog before inputs had it
        con.execute(
            "CREATE TABLE cycles (cycle BIGINT PRIMARY KEY, candidate VARCHAR, metric VARCHAR, "
            "value DOUBLE, champion_before VARCHAR, champion_value DOUBLE, promoted BOOLEAN, "
            "reason VARCHAR, decided_at TIMESTAMP, candidate_path VARCHAR)"
        )
        con.execute(
            "INSERT INTO cycles VALUES (0, 'v-a', 'acc', 0.5, NULL, NULL, true, 'first', "
            "'2026-03-01 12:00:00', '/a')"
        )
    cat = Catalog.open(path)
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert cat.decisions() == [Decision(0, "v-a", "/a", "acc", 0.5, None, None, True, "first", at)]
    read = {"cycle_eval_scores": "v-e", "cycle_checkpoint": "v-b", "promoted_model/0": "v-a"}
    one = Decision(1, "v-b", "/b", "acc", 0.7, "v-a", 0.5, True, "better", at, read)
    cat.record_decision(one)
    assert cat.decisions()[1] == one and cat.decisions()[0].inputs == {}

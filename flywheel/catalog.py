"""The DuckDB catalog: documents, filter decisions, duplicate clusters and their provenance.

    flywheel lineage DOC_ID        where a document came from and why it was kept or dropped

Data lives in Parquet shards; the catalog records *facts about* the data so that lineage
questions are one SQL query. Each stage replaces its own rows when it re-materializes (a raw
source its documents, the filter stage its decisions, dedup its clusters), so the catalog
always describes the committed shard sets. Later stages add generations and checkpoints.

DuckDB allows one writing process per file; Dagster's multiprocess executor can run two stages
at once, so ``connect`` retries while another process holds the lock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

LOCK_WAIT_S = 120.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id VARCHAR PRIMARY KEY, source VARCHAR, source_id VARCHAR, path VARCHAR,
    "offset" BIGINT, content_hash VARCHAR, n_chars BIGINT, shard VARCHAR, version VARCHAR
);
CREATE TABLE IF NOT EXISTS quarantine (
    source VARCHAR, path VARCHAR, "offset" BIGINT, reason VARCHAR, detail VARCHAR,
    raw VARCHAR, version VARCHAR
);
CREATE TABLE IF NOT EXISTS filter_decisions (
    doc_id VARCHAR PRIMARY KEY, kept BOOLEAN, filter VARCHAR, reason VARCHAR, version VARCHAR
);
CREATE TABLE IF NOT EXISTS duplicates (
    doc_id VARCHAR PRIMARY KEY, duplicate_of VARCHAR, method VARCHAR, similarity DOUBLE,
    version VARCHAR
);
CREATE TABLE IF NOT EXISTS deduplicated (
    doc_id VARCHAR PRIMARY KEY, shard VARCHAR, version VARCHAR
);
CREATE TABLE IF NOT EXISTS materializations (
    product VARCHAR, version VARCHAR, spec_fingerprint VARCHAR, code_version VARCHAR,
    created_at TIMESTAMP, metadata JSON
);
"""


class Catalog:
    """A handle on the catalog file; each method opens, writes and closes a connection."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as con:
            con.execute(SCHEMA)

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        try:
            yield con
        finally:
            con.close()

    # -- writers: each replaces the rows its stage owns, in one transaction --------------
    def record_source(
        self, source: str, documents: pl.DataFrame, quarantine: pl.DataFrame, version: str
    ) -> None:
        """Replace ``source``'s documents and quarantine with a new raw version's."""
        with self.connect() as con, _transaction(con):
            con.register("docs", documents.with_columns(pl.lit(version).alias("version")))
            con.register("quar", quarantine.with_columns(pl.lit(version).alias("version")))
            con.execute("DELETE FROM documents WHERE source = ?", [source])
            con.execute("DELETE FROM quarantine WHERE source = ?", [source])
            con.execute(
                'INSERT INTO documents SELECT doc_id, source, source_id, path, "offset", '
                "content_hash, n_chars, shard, version FROM docs"
            )
            con.execute(
                'INSERT INTO quarantine SELECT source, path, "offset", reason, detail, raw, '
                "version FROM quar"
            )

    def record_filter_decisions(self, decisions: pl.DataFrame, version: str) -> None:
        frame = decisions.select("id", "kept", "filter", "reason")
        with self.connect() as con, _transaction(con):
            con.register("frame", frame.with_columns(pl.lit(version).alias("version")))
            con.execute("DELETE FROM filter_decisions")
            con.execute("INSERT INTO filter_decisions SELECT * FROM frame")

    def record_dedup(self, kept: pl.DataFrame, duplicates: pl.DataFrame, version: str) -> None:
        """``kept``: id, shard of every kept document; ``duplicates``: the removed ones."""
        v = pl.lit(version).alias("version")
        with self.connect() as con, _transaction(con):
            con.register("kept_f", kept.select("id", "shard").with_columns(v))
            con.register(
                "dup_f",
                duplicates.select("id", "duplicate_of", "method", "similarity").with_columns(v),
            )
            con.execute("DELETE FROM deduplicated")
            con.execute("DELETE FROM duplicates")
            con.execute("INSERT INTO deduplicated SELECT * FROM kept_f")
            con.execute("INSERT INTO duplicates SELECT * FROM dup_f")

    def record_materialization(
        self, product: str, version: str, spec_fingerprint: str, metadata: dict[str, Any]
    ) -> None:
        from flywheel import __version__

        with self.connect() as con:
            con.execute(
                "INSERT INTO materializations VALUES (?, ?, ?, ?, ?, ?)",
                [
                    product,
                    version,
                    spec_fingerprint,
                    __version__,
                    datetime.now(UTC),
                    json.dumps(metadata, default=str),
                ],
            )

    # -- queries -------------------------------------------------------------------------
    def query(self, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
        with self.connect(read_only=True) as con:
            return pl.from_arrow(con.sql(sql, params=params or None).to_arrow_table())

    def document_lineage(self, doc_id: str) -> dict[str, Any]:
        """Where a document came from and why it was kept or dropped, as one dict."""
        rows = self.query(
            """
            SELECT d.*, f.kept AS passed_filters, f.filter, f.reason,
                   x.duplicate_of, x.method AS dedup_method, x.similarity,
                   k.shard AS deduplicated_shard
            FROM documents d
            LEFT JOIN filter_decisions f USING (doc_id)
            LEFT JOIN duplicates x USING (doc_id)
            LEFT JOIN deduplicated k USING (doc_id)
            WHERE d.doc_id = ?
            """,
            [doc_id],
        ).to_dicts()
        if not rows:
            raise KeyError(f"document {doc_id!r} is not in the catalog {self.path}")
        row = rows[0]
        row["cluster"] = self.cluster(row["duplicate_of"] or doc_id)
        if row["duplicate_of"]:
            kept = self.query(
                "SELECT source, source_id, path FROM documents WHERE doc_id = ?",
                [row["duplicate_of"]],
            ).to_dicts()
            row["duplicate_of_origin"] = kept[0] if kept else None
        row["status"] = _status(row)
        return row

    def cluster(self, root: str) -> list[str]:
        """The kept document ``root`` and every document removed as its duplicate."""
        ids = self.query(
            "SELECT doc_id FROM duplicates WHERE duplicate_of = ? ORDER BY doc_id", [root]
        )["doc_id"].to_list()
        return [root, *ids] if ids else []

    def counts(self) -> dict[str, int]:
        tables = ["documents", "quarantine", "filter_decisions", "duplicates", "deduplicated"]
        with self.connect(read_only=True) as con:
            return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def _status(row: dict[str, Any]) -> str:
    if row.get("passed_filters") is None:
        return "ingested (not yet filtered)"
    if not row["passed_filters"]:
        return f"dropped by filter {row['filter']}: {row['reason']}"
    if row.get("duplicate_of"):
        kind = "exact duplicate" if row["dedup_method"] == "exact" else "near-duplicate"
        return (
            f"removed as {kind} of {row['duplicate_of']} by {row['dedup_method']} dedup "
            f"(similarity {row['similarity']:.3f})"
        )
    if row.get("deduplicated_shard"):
        return f"kept in {row['deduplicated_shard']}"
    return "passed filters (not yet deduplicated)"


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")

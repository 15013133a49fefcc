"""The catalog: provenance of the data and models, and the record of the loop.

    flywheel lineage DOC_ID        where a document came from and why it was kept or dropped
    flywheel report                the loop's record: decisions, champion, failed runs

Data lives in Parquet shards; the catalog records *facts about* the data so that lineage
questions are one SQL query. Each stage replaces its own rows when it re-materializes (a raw
source its documents, the filter stage its decisions, dedup its clusters), so the catalog
always describes the committed shard sets. Later stages add generations and checkpoints.
The loop's own state lives only here: one promotion ``Decision`` per cycle (the champion is
the newest promoted candidate) and every finished cycle run (``CycleRun``).

``Catalog.open(path)`` is the one way to get a handle: one per process and path. The catalog
is stored as Parquet fragments (``flywheel.core.catalog_store``: why, and how reads stay
consistent) in the directory ``<path>.d``; ``path`` itself is a small marker file naming it.
Any number of processes on any number of nodes write at once, with no lock and no server: a
write appends fragments, and "replace my own rows" is a tombstone for its key, so the newest
write of a key wins. Queries are DuckDB SQL on views of the same tables, so lineage, reports
and the loop's record read as before. A catalog that is still one DuckDB file (before
fragments) is migrated on first open and kept as ``<path>.migrated``.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from flywheel.core import products as P
from flywheel.core.catalog_images import IMAGE_KEYS, IMAGE_SCHEMA, ImageRecord
from flywheel.core.catalog_migrate import adopt
from flywheel.core.catalog_store import WHOLE_TABLE, FragmentStore, Staged
from flywheel.core.loop_record import LOOP_KEYS, LOOP_SCHEMA, CycleRun, Decision, LoopRecord

if TYPE_CHECKING:
    import duckdb

__all__ = ["Catalog", "CycleRun", "Decision"]

MARKER = {"catalog": "flywheel", "storage": "parquet fragments", "format": 1}

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
CREATE TABLE IF NOT EXISTS tokenized_documents (
    doc_id VARCHAR, split VARCHAR, seq_start BIGINT, seq_end BIGINT, tokens BIGINT,
    version VARCHAR
);
CREATE TABLE IF NOT EXISTS checkpoints (
    checkpoint VARCHAR PRIMARY KEY, stage VARCHAR, path VARCHAR, parent VARCHAR,
    inputs JSON, metrics JSON, spec_fingerprint VARCHAR, created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS eval_scores (
    checkpoint VARCHAR, eval_version VARCHAR, metric VARCHAR, value DOUBLE,
    created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS generations (
    generation_id VARCHAR PRIMARY KEY, cycle BIGINT, prompt_id VARCHAR, checkpoint VARCHAR,
    status VARCHAR, reason VARCHAR, accepted_version VARCHAR
);
CREATE TABLE IF NOT EXISTS training_sets (
    version VARCHAR PRIMARY KEY, cycle BIGINT, parent_cycle BIGINT, parent_version VARCHAR,
    rows BIGINT, seed_rows BIGINT, generation_rows BIGINT, new_rows BIGINT,
    created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS training_examples (
    version VARCHAR, prompt_id VARCHAR, generation_id VARCHAR, origin VARCHAR,
    cycle_added BIGINT
);
CREATE TABLE IF NOT EXISTS materializations (
    product VARCHAR, version VARCHAR, spec_fingerprint VARCHAR, code_version VARCHAR,
    created_at TIMESTAMP, metadata JSON
);
"""

# The column each table's writes replace their rows by (WHOLE_TABLE: a stage that owns the
# whole table); materializations is append-only.
KEYS = {
    "documents": "source",
    "quarantine": "source",
    "filter_decisions": WHOLE_TABLE,
    "duplicates": WHOLE_TABLE,
    "deduplicated": WHOLE_TABLE,
    "tokenized_documents": "version",
    "checkpoints": "checkpoint",
    "eval_scores": "eval_version",
    "generations": "cycle",
    "training_sets": "version",
    "training_examples": "version",
    **LOOP_KEYS,
    **IMAGE_KEYS,
}

_OPENED: dict[tuple[int, Path], Catalog] = {}
_OPENING = threading.Lock()
_TOKEN = object()


class Catalog(LoopRecord, ImageRecord):
    """A handle on the catalog at ``path``: writes append fragments, queries read views."""

    def __init__(self, path: Path, token: object = None):
        if token is not _TOKEN:
            raise TypeError("get the catalog with Catalog.open(path), once per process")
        self.path = path
        self._store = FragmentStore(
            path.with_name(path.name + ".d"), SCHEMA + LOOP_SCHEMA + IMAGE_SCHEMA, KEYS
        )

    @classmethod
    def open(cls, path: Path | str) -> Catalog:
        """This process's handle on the catalog at ``path``. The first call in a process (or
        the first after the marker file was removed) creates the marker, or migrates a DuckDB
        file found there; later calls reuse it. The key holds the process id, so a forked
        child creates its own handle (and its own in-memory DuckDB)."""
        key = (os.getpid(), Path(path).resolve())
        with _OPENING:
            catalog = _OPENED.get(key)
            if catalog is None or not catalog.path.exists():
                catalog = cls(key[1], _TOKEN)
                adopt(catalog._store, catalog.path, MARKER)
                _OPENED[key] = catalog
        return catalog

    def write(self) -> AbstractContextManager[Staged]:
        """Stage one write (``Staged.con``: SQL on the typed tables, ``Staged.replace``: the
        rows it replaces); all of it becomes visible at once when the block exits."""
        return self._store.write()

    def compact(self) -> bool:
        """Fold the fragments into one per table (writers do it every ``COMPACT_AFTER``)."""
        return self._store.compact()

    # -- writers: each replaces the rows its stage owns, in one write -------------------
    def record_source(
        self, source: str, documents: pl.DataFrame, quarantine: pl.DataFrame, version: str
    ) -> None:
        """Replace ``source``'s documents and quarantine with a new raw version's."""
        with self.write() as w:
            w.con.register("docs", documents.with_columns(pl.lit(version).alias("version")))
            w.con.register("quar", quarantine.with_columns(pl.lit(version).alias("version")))
            w.replace("documents", source)
            w.replace("quarantine", source)
            w.con.execute(
                'INSERT INTO documents SELECT doc_id, source, source_id, path, "offset", '
                "content_hash, n_chars, shard, version FROM docs"
            )
            w.con.execute(
                'INSERT INTO quarantine SELECT source, path, "offset", reason, detail, raw, '
                "version FROM quar"
            )

    def record_filter_decisions(self, decisions: pl.DataFrame, version: str) -> None:
        frame = decisions.select("id", "kept", "filter", "reason")
        with self.write() as w:
            w.con.register("frame", frame.with_columns(pl.lit(version).alias("version")))
            w.replace("filter_decisions")
            w.con.execute("INSERT INTO filter_decisions SELECT * FROM frame")

    def record_dedup(self, kept: pl.DataFrame, duplicates: pl.DataFrame, version: str) -> None:
        """``kept``: id, shard of every kept document; ``duplicates``: the removed ones."""
        v = pl.lit(version).alias("version")
        with self.write() as w:
            w.con.register("kept_f", kept.select("id", "shard").with_columns(v))
            w.con.register(
                "dup_f",
                duplicates.select("id", "duplicate_of", "method", "similarity").with_columns(v),
            )
            w.replace("deduplicated")
            w.replace("duplicates")
            w.con.execute("INSERT INTO deduplicated SELECT * FROM kept_f")
            w.con.execute("INSERT INTO duplicates SELECT * FROM dup_f")

    def record_tokenized(self, spans: pl.DataFrame, version: str) -> None:
        """Which documents (``id``, ``split``) went into which packed sequences of a version."""
        frame = spans.select("id", "split", "seq_start", "seq_end", "tokens")
        with self.write() as w:
            w.con.register("spans", frame.with_columns(pl.lit(version).alias("version")))
            w.replace("tokenized_documents", version)
            w.con.execute("INSERT INTO tokenized_documents SELECT * FROM spans")

    def record_checkpoint(
        self,
        checkpoint: str,
        stage: str,
        path: Path,
        parent: str | None,
        inputs: dict[str, Any],
        metrics: dict[str, Any],
        spec_fingerprint: str,
    ) -> None:
        """A published checkpoint and what it was trained from (dataset, tokenizer, parent)."""
        with self.write() as w:
            w.replace("checkpoints", checkpoint)
            w.con.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    checkpoint,
                    stage,
                    str(path),
                    parent,
                    json.dumps(inputs, default=str),
                    json.dumps(metrics, default=str),
                    spec_fingerprint,
                    datetime.now(UTC),
                ],
            )

    def record_eval(self, checkpoint: str, eval_version: str, metrics: dict[str, float]) -> None:
        now = datetime.now(UTC)
        with self.write() as w:
            w.replace("eval_scores", eval_version)
            for metric, value in metrics.items():
                w.con.execute(
                    "INSERT INTO eval_scores VALUES (?, ?, ?, ?, ?)",
                    [checkpoint, eval_version, metric, float(value), now],
                )

    def record_generations(self, cycle: int, decisions: pl.DataFrame, version: str) -> None:
        """Replace cycle ``cycle``'s acceptance decisions: one row per generation with
        generation_id, prompt_id, checkpoint, status ('accepted'|'rejected') and reason."""
        frame = decisions.select(
            "generation_id",
            pl.lit(cycle, dtype=pl.Int64).alias("cycle"),
            "prompt_id",
            "checkpoint",
            "status",
            "reason",
            pl.lit(version).alias("accepted_version"),
        )
        with self.write() as w:
            w.con.register("gen_f", frame)
            w.replace("generations", cycle)
            w.con.execute("INSERT INTO generations SELECT * FROM gen_f")

    def record_training_set(
        self, version: str, facts: dict[str, Any], examples: pl.DataFrame
    ) -> None:
        """Replace a training set's row (cycle, parent, row counts) and its examples
        (prompt_id, generation_id, origin, cycle_added)."""
        keys = ["cycle", "parent_cycle", "parent_version", "rows", "seed_rows"]
        keys += ["generation_rows", "new_rows"]
        frame = examples.select(
            pl.lit(version).alias("version"), "prompt_id", "generation_id", "origin", "cycle_added"
        )
        with self.write() as w:
            w.replace("training_sets", version)
            w.replace("training_examples", version)
            w.con.execute(
                "INSERT INTO training_sets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [version, *(facts[k] for k in keys), datetime.now(UTC)],
            )
            w.con.register("examples_f", frame)
            w.con.execute("INSERT INTO training_examples SELECT * FROM examples_f")

    def record_materialization(
        self, product: str, version: str, spec_fingerprint: str, metadata: dict[str, Any]
    ) -> None:
        from flywheel import __version__

        with self.write() as w:
            w.con.execute(
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
        """``sql`` on the catalog's tables as one consistent set of committed writes."""
        return self._store.read(sql, params, lambda rel: pl.from_arrow(rel.to_arrow_table()))

    def rows(self, sql: str) -> list[dict[str, Any]]:
        """``sql``'s rows as dicts of Python values (DuckDB's, not Polars', conversions)."""

        def fetch(rel: duckdb.DuckDBPyRelation) -> list[dict[str, Any]]:
            return [dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()]

        return self._store.read(sql, None, fetch)

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

    def checkpoint_lineage(self, checkpoint: str) -> dict[str, Any]:
        """A checkpoint, its chain of parents, and the training documents of its dataset."""
        chain: list[dict[str, Any]] = []
        current: str | None = checkpoint
        while current is not None and len(chain) < 100:
            rows = self.query("SELECT * FROM checkpoints WHERE checkpoint = ?", [current])
            if rows.height == 0:
                break
            row = rows.row(0, named=True)
            row["inputs"] = json.loads(row["inputs"] or "{}")
            row["metrics"] = json.loads(row["metrics"] or "{}")
            chain.append(row)
            current = row["parent"]
        if not chain:
            raise KeyError(f"checkpoint {checkpoint!r} is not in the catalog")
        docs: dict[str, int] = {}
        for row in chain:
            version = row["inputs"].get(P.TOKENIZED)
            if version:
                n = self.query(
                    "SELECT count(*) AS n FROM tokenized_documents "
                    "WHERE version = ? AND split = 'train'",
                    [version],
                )["n"][0]
                docs[version] = int(n)
        return {"checkpoint": checkpoint, "chain": chain, "training_documents": docs}

    def training_documents(self, dataset_version: str) -> pl.DataFrame:
        return self.query(
            "SELECT doc_id, seq_start, seq_end, tokens FROM tokenized_documents "
            "WHERE version = ? AND split = 'train' ORDER BY seq_start",
            [dataset_version],
        )

    def cluster(self, root: str) -> list[str]:
        """The kept document ``root`` and every document removed as its duplicate."""
        ids = self.query(
            "SELECT doc_id FROM duplicates WHERE duplicate_of = ? ORDER BY doc_id", [root]
        )["doc_id"].to_list()
        return [root, *ids] if ids else []

    def counts(self) -> dict[str, int]:
        tables = ["documents", "quarantine", "filter_decisions", "duplicates", "deduplicated"]
        counts = ", ".join(f"(SELECT count(*) FROM {t}) AS {t}" for t in tables)
        return self.rows(f"SELECT {counts}")[0]


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

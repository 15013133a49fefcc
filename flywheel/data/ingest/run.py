"""Ingest one source into a versioned shard set of documents plus its quarantine.

``ingest_source`` streams the source batch by batch through the record checker into a
``ShardWriter``: documents become shards, every rejected record becomes a row of the ``quarantine``
auxiliary table, and the version is committed (made current) only at the end, so a failed or
killed run leaves the previous version in place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from flywheel.core.settings.engine import RaySettings
from flywheel.core.settings.sources import SourceSpec
from flywheel.core.shards import ShardSet, ShardWriter
from flywheel.data.documents import QUARANTINE_SCHEMA, empty_documents
from flywheel.data.ingest.files import ReadStats
from flywheel.data.ingest.readers import read_batches, source_files
from flywheel.data.ingest.records import RecordChecker

log = logging.getLogger(__name__)

QUARANTINE = "quarantine"  # name of the auxiliary table of rejected records


@dataclass(frozen=True)
class IngestResult:
    """What one ingest run produced."""

    shardset: ShardSet
    documents: int
    quarantined: int
    quarantine_by_reason: dict[str, int]
    bytes_read: int  # on-disk input bytes (compressed size for .gz/.zst)
    seconds: float
    text_bytes: int = 0  # UTF-8 bytes of the documents' text
    files: int = 0  # input files read
    skipped: dict[str, int] = field(default_factory=dict)  # non-records, e.g. blank lines

    @property
    def records_read(self) -> int:
        return self.documents + self.quarantined


class QuarantineSpill:
    """Quarantine rows streamed to a Parquet file in the writer's staging directory (the text
    and the image ingests both use it).

    A source that is mostly bad (a wrong ``text_field`` makes every record ``missing_text``)
    would otherwise hold its whole quarantine in memory until the commit.
    """

    def __init__(self, directory: Path):
        self.path = Path(directory) / f".{QUARANTINE}-spill.parquet"
        self._writer: pq.ParquetWriter | None = None

    def write(self, rows: pl.DataFrame) -> None:
        if rows.height == 0:
            return
        table = rows.to_arrow()
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self._writer.write_table(table)

    def finish(self) -> pl.DataFrame | pl.LazyFrame:
        """All rows written, as a frame to stream into the aux table."""
        if self._writer is None:
            return pl.DataFrame(schema=QUARANTINE_SCHEMA)
        self._writer.close()
        return pl.scan_parquet(self.path)

    def close(self) -> None:
        """Remove the spill file (so it is not committed with the version)."""
        if self._writer is not None:
            self._writer.close()
        self.path.unlink(missing_ok=True)


def ingest_source(
    source: SourceSpec,
    root: Path,
    *,
    base_dir: Path,
    batch_rows: int = 2000,
    shard_rows: int = 50_000,
    max_doc_bytes: int = 1_000_000,
    meta: Mapping[str, Any] | None = None,
    ray: RaySettings | None = None,
) -> IngestResult:
    """Read ``source`` and commit its documents as a new version of the shard set at ``root``.

    Relative input paths resolve against ``base_dir``. Memory is bounded by ``batch_rows``
    records being checked plus ``shard_rows`` documents buffered by the writer. Raises
    ``FileNotFoundError`` when no input matches (before anything is written) and
    ``SourceReadError`` when an input file is unreadable as a whole. ``meta``: more fields
    for the manifest (the stage's build key). ``ray``: read and check the files in Ray tasks
    on that cluster (``engine: ray``; the same version results), else in this process. The
    built-in ``python_env`` source reads this machine's installation, so it is always read
    here.
    """
    limits = {"batch_rows": batch_rows, "shard_rows": shard_rows, "max_doc_bytes": max_doc_bytes}
    for arg, value in limits.items():
        if value < 1:
            raise ValueError(f"{arg} must be >= 1, got {value}")
    started = time.perf_counter()
    stats = ReadStats()
    checker = RecordChecker(
        source.name, max_doc_bytes=max_doc_bytes, require_id=getattr(source, "require_id", False)
    )
    read = {"base_dir": base_dir, "batch_rows": batch_rows, "max_doc_bytes": max_doc_bytes}
    on_ray = ray is not None and source.kind != "python_env"
    outcomes = (
        _on_ray(source, checker, stats, ray, read)
        if on_ray
        else _here(source, checker, stats, read)
    )
    with ShardWriter(root, shard_rows) as writer:
        writer.write(empty_documents())  # records the schema even if no record is valid
        spill = QuarantineSpill(writer.staging)
        try:
            for documents, rejected in outcomes:
                writer.write(documents)
                spill.write(rejected)
            writer.write_aux(QUARANTINE, spill.finish())
        finally:
            spill.close()
        metadata = _metadata(source, checker, stats, time.perf_counter() - started)
        metadata["engine"] = "ray" if on_ray else "local"
        shardset = writer.commit(**metadata, limits=limits, **dict(meta or {}))
    result = IngestResult(
        shardset=shardset,
        documents=checker.documents,
        quarantined=checker.quarantined,
        quarantine_by_reason=dict(sorted(checker.quarantine_by_reason.items())),
        bytes_read=stats.bytes_read,
        seconds=time.perf_counter() - started,
        text_bytes=checker.text_bytes,
        files=stats.files,
        skipped=dict(sorted(stats.skipped.items())),
    )
    log.info(
        "ingested %s: %d documents, %d quarantined %s, %.1f MB read in %.1fs -> %s",
        source.name, result.documents, result.quarantined, result.quarantine_by_reason,
        result.bytes_read / 1e6, result.seconds, shardset.path,
    )  # fmt: skip
    return result


def _here(
    source: SourceSpec, checker: RecordChecker, stats: ReadStats, read: dict[str, Any]
) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """(documents, quarantine rows) per batch, read and checked in this process. Input paths
    are resolved now, so a missing path fails before anything is written."""
    batches = read_batches(source, stats=stats, **read)
    return (checker.check_batch(batch) for batch in batches)


def _on_ray(
    source: SourceSpec,
    checker: RecordChecker,
    stats: ReadStats,
    ray: RaySettings,
    read: dict[str, Any],
) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """The same, from Ray tasks reading the files (``flywheel.data.ingest.ray_ingest``)."""
    from flywheel.data.dedup.ray_engine import connect
    from flywheel.data.ingest.ray_ingest import checked_batches

    files = source_files(source, read["base_dir"])  # FileNotFoundError before writing
    connect(ray)
    return checked_batches(source, files, checker, stats, **read)


def _metadata(
    source: SourceSpec, checker: RecordChecker, stats: ReadStats, seconds: float
) -> dict[str, Any]:
    """What the manifest records about the run (keys must not clash with the manifest's own)."""
    return {
        "source": source.name,
        "kind": source.kind,
        "spec": source.model_dump(mode="json"),
        "documents": checker.documents,
        "quarantined": checker.quarantined,
        "quarantine_by_reason": dict(sorted(checker.quarantine_by_reason.items())),
        "records_read": checker.documents + checker.quarantined,
        "skipped": dict(sorted(stats.skipped.items())),
        "files_read": stats.files,
        "bytes_read": stats.bytes_read,
        "text_bytes": checker.text_bytes,
        "ingest_seconds": round(seconds, 3),
    }

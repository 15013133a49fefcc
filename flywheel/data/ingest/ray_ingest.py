"""Ingest on a Ray cluster (``engine: ray``): a source's files read and checked by Ray Data
tasks, with the local engine's documents, ids and quarantine rows.

    python -c "from flywheel.data.ingest.ray_ingest import *; help(checked_batches)"

One Ray Data stage over the source's files (``source_files``, resolved by the caller): a task
reads a file with the local readers (``readers.file_records``), checks its records in batches
of ``batch_rows`` with a ``RecordChecker`` (bad UTF-8, bad JSON, missing or oversized text,
bad ids: the same reasons and details) and streams them back in the files' order, documents
and quarantine rows together in record order, then one summary row of the file's read
statistics. Everything a record's fate depends on is in the record, except one thing: whether
its id was seen before in the source, possibly in another file. That is decided in the
step's process by ``RecordChecker.admit``, in the source's order, from the ids' 64-bit
fingerprints (the ~70 bytes per record with an id the local engine holds too), so the first
valid record with an id is the one kept, whatever task read it. A task lost with its node is
retried by Ray Data; a file that cannot be read at all stops the run with
``SourceReadError``, as locally. Ray is imported here only; every node must see the files.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa

from flywheel.core.settings.sources import SourceSpec
from flywheel.data.documents import DOCUMENT_SCHEMA, QUARANTINE_SCHEMA
from flywheel.data.ingest.files import ReadStats
from flywheel.data.ingest.readers import SourceReadError, batched, file_records
from flywheel.data.ingest.records import RecordChecker

FILE, STATS = "file", "read_stats"  # the file's index in the source; a file's summary row
CHECKED_SCHEMA = {**DOCUMENT_SCHEMA, **QUARANTINE_SCHEMA, FILE: pl.Int64, STATS: pl.String}
_MAX_BLOCKS = 1024  # files per read task: one each up to this many files


def checked_batches(
    source: SourceSpec,
    files: list[Path],
    checker: RecordChecker,
    stats: ReadStats,
    *,
    base_dir: Path,
    batch_rows: int,
    max_doc_bytes: int,
) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """``(documents, quarantine rows)`` of ``files``, read by Ray tasks, in the order the local
    engine yields them; ``checker`` and ``stats`` count them as they would locally. Needs a
    connected Ray (``flywheel.data.dedup.ray_engine.connect``)."""
    import ray.data

    items = [{FILE: i, "path": str(p)} for i, p in enumerate(files)]
    options = {
        "source": source,
        "base_dir": Path(base_dir).absolute(),
        "batch_rows": batch_rows,
        "max_doc_bytes": max_doc_bytes,
    }
    with _ordered(), _source_errors(source):
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), _MAX_BLOCKS)))
        checked = ds.map_batches(
            _read_files, batch_format="pyarrow", batch_size=1, fn_kwargs=options
        )
        for block in checked.iter_batches(batch_format="pyarrow", batch_size=None):
            frame = pl.from_arrow(block)
            for summary in frame.filter(pl.col(STATS).is_not_null())[STATS]:
                _count(stats, json.loads(summary))
            records = frame.filter(pl.col(STATS).is_null()).sort(
                FILE, "offset", maintain_order=True
            )
            if records.height:
                yield checker.admit(records)


def _read_files(
    batch: pa.Table, source: SourceSpec, base_dir: Path, batch_rows: int, max_doc_bytes: int
) -> Iterator[pa.Table]:
    """A Ray task: each file's checked records (``CHECKED_SCHEMA``), batch by batch, then its
    summary row (``read_stats``: JSON of the file's ``ReadStats``)."""
    for index, path in zip(batch[FILE].to_pylist(), batch["path"].to_pylist(), strict=True):
        stats = ReadStats()
        checker = RecordChecker(
            source.name,
            max_doc_bytes=max_doc_bytes,
            require_id=getattr(source, "require_id", False),
            track_ids=False,
        )
        records = file_records(
            source,
            Path(path),
            base_dir=base_dir,
            batch_rows=batch_rows,
            max_doc_bytes=max_doc_bytes,
            stats=stats,
        )
        for records_batch in batched(records, batch_rows):
            documents, rejected = checker.check_batch(records_batch)
            frame = pl.concat([documents, rejected], how="diagonal")
            yield _checked(frame.with_columns(pl.lit(index, pl.Int64).alias(FILE)))
        summary = {"files": stats.files, "bytes_read": stats.bytes_read, "skipped": stats.skipped}
        yield _checked(pl.DataFrame({FILE: [index], STATS: [json.dumps(summary)]}))


def _checked(frame: pl.DataFrame) -> pa.Table:
    """``frame`` in ``CHECKED_SCHEMA`` (absent columns null): every block has one schema."""
    missing = [
        pl.lit(None, dtype).alias(c) for c, dtype in CHECKED_SCHEMA.items() if c not in frame
    ]
    return frame.with_columns(missing).select(list(CHECKED_SCHEMA)).cast(CHECKED_SCHEMA).to_arrow()


def _count(stats: ReadStats, summary: dict) -> None:
    stats.files += summary["files"]
    stats.bytes_read += summary["bytes_read"]
    stats.skipped.update(summary["skipped"])


@contextlib.contextmanager
def _ordered() -> Iterator[None]:
    """Blocks come back in the files' order (documents are written in it), with no progress
    bars; the data context is restored after."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, False
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


@contextlib.contextmanager
def _source_errors(source: SourceSpec) -> Iterator[None]:
    """A task's ``SourceReadError`` (an unreadable file) as the local engine raises it, not
    wrapped in Ray's task error."""
    try:
        yield
    except SourceReadError:
        raise
    except Exception as e:
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, SourceReadError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise SourceReadError(str(cause)) from e

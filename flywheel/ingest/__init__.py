"""The ingest layer: read raw sources into versioned shard sets of documents.

A source is declared as a ``SourceSpec`` (JSONL, Parquet, a directory of text files, or the
built-in ``python_env`` harvest of text already on the machine); ``ingest_source`` streams it
in bounded batches, gives every document a stable id and its provenance, and quarantines every
record it cannot use, with a reason, instead of dropping it.
"""

from flywheel.ingest.readers import ReadStats, SourceReadError, read_batches, source_files
from flywheel.ingest.records import QUARANTINE_REASONS, RawRecord, document_id
from flywheel.ingest.run import QUARANTINE, IngestResult, ingest_source
from flywheel.ingest.specs import (
    JsonlSource,
    ParquetSource,
    PythonEnvSource,
    SourceSpec,
    TextFilesSource,
    parse_source,
)

__all__ = [
    "QUARANTINE",
    "QUARANTINE_REASONS",
    "IngestResult",
    "JsonlSource",
    "ParquetSource",
    "PythonEnvSource",
    "RawRecord",
    "ReadStats",
    "SourceReadError",
    "SourceSpec",
    "TextFilesSource",
    "document_id",
    "ingest_source",
    "parse_source",
    "read_batches",
    "source_files",
]

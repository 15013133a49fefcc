"""The ingest layer: read raw sources into versioned shard sets of documents.

A source is declared as a ``SourceSpec`` (JSONL, Parquet, a directory of text files, or the
built-in ``python_env`` harvest of text already on the machine); ``ingest_source`` streams it
in bounded batches, gives every document a stable id and its provenance, and quarantines every
record it cannot use, with a reason, instead of dropping it.
"""

from flywheel.core.settings.sources import (
    JsonlSource,
    ParquetSource,
    PythonEnvSource,
    SourceSpec,
    TextFilesSource,
    parse_source,
)
from flywheel.data.ingest.files import ReadStats
from flywheel.data.ingest.readers import SourceReadError, read_batches, source_files
from flywheel.data.ingest.records import QUARANTINE_REASONS, RawRecord, document_id
from flywheel.data.ingest.run import QUARANTINE, IngestResult, ingest_source

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

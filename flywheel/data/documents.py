"""The row schemas every data product of the document plane shares.

A document row carries its text and its provenance; a quarantine row carries what was wrong
with a record that could not become a document, so nothing read is ever silently lost.
"""

from __future__ import annotations

import polars as pl

DOCUMENT_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),  # stable: "<source>-<16 hex>" from the source name and the record's key
    "text": pl.String(),
    "source": pl.String(),  # the spec's source name
    "source_id": pl.String(),  # the record's own id field, as a string, when it has one
    "path": pl.String(),  # file the record came from (or a module/package for python_env)
    "offset": pl.Int64(),  # byte offset (JSONL), row index (Parquet), 0 (one file per doc)
}

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),
    "path": pl.String(),
    "offset": pl.Int64(),
    "reason": pl.String(),  # a short machine-readable reason, e.g. "invalid_json"
    "detail": pl.String(),  # the human-readable error
    "raw": pl.String(),  # the first bytes of the record, escaped, for inspection
}

DROPPED_SCHEMA: dict[str, pl.DataType] = {
    **DOCUMENT_SCHEMA,
    "reason": pl.String(),  # "<filter>: <why>", e.g. "gopher_quality: word_count 12 < 50"
}


def empty_documents() -> pl.DataFrame:
    return pl.DataFrame(schema=DOCUMENT_SCHEMA)

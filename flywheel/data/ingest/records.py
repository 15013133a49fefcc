"""From raw records to documents or quarantine rows.

Readers turn input into ``RawRecord``s (a record's text and id as found, or the reason it could
not even be parsed); ``RecordChecker`` decides, record by record, whether each becomes a
document or a quarantine row, and gives documents their stable ids. Every record read ends up
in exactly one of the two, so ``documents + quarantined == records read`` always holds.

Id policy (``id_field`` configured):
  * absent or null id -> the record is kept and keyed by position (path + offset), with a null
    ``source_id``; with ``require_id=True`` it is quarantined as ``missing_id`` instead;
  * an id that is not a scalar (object, array), an empty string, a non-finite number or text
    that is not valid Unicode -> ``bad_id`` (it cannot identify the record, and keying such a
    record by position would hide a schema problem);
  * the same id a second time -> ``duplicate_id``; the first *valid* record with it is kept.
    Ids compare as strings, so ``1`` and ``"1"`` are the same id.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import polars as pl

from flywheel.data.documents import DOCUMENT_SCHEMA, QUARANTINE_SCHEMA

RAW_PREFIX_BYTES = 200

# Every reason a record can be quarantined for.
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_TEXT = "missing_text"
TEXT_NOT_STRING = "text_not_string"
EMPTY_TEXT = "empty_text"
TOO_LARGE = "too_large"
DUPLICATE_ID = "duplicate_id"
MISSING_ID = "missing_id"
BAD_ID = "bad_id"
QUARANTINE_REASONS = (
    INVALID_UTF8, INVALID_JSON, NOT_AN_OBJECT, MISSING_TEXT, TEXT_NOT_STRING,
    EMPTY_TEXT, TOO_LARGE, DUPLICATE_ID, MISSING_ID, BAD_ID,
)  # fmt: skip


class _Missing:
    """Marks a field that is absent (as opposed to present and null)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(slots=True)
class RawRecord:
    """One record as a reader found it, before any validation.

    ``locator`` identifies the record's position ("<path>:<offset>") and keys it when it has no
    id. ``error`` is set when the reader itself could not parse the record; ``raw`` holds its
    first bytes for the quarantine (readers that have no byte form leave it None).
    """

    path: str
    offset: int
    locator: str
    text: Any = MISSING
    id_value: Any = MISSING
    error: tuple[str, str] | None = None
    raw: bytes | None = None


def document_id(source: str, key: str) -> str:
    """``"<source>-<16 hex>"``: a sha1 over the source name and the record's key."""
    digest = hashlib.sha1(f"{source}\x00{key}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"{source}-{digest[:16]}"


def escape_raw(data: bytes) -> str:
    """The first bytes of a record, escaped so any input is printable and valid UTF-8."""
    return repr(bytes(data[:RAW_PREFIX_BYTES]))


def _record_bytes(rec: RawRecord) -> bytes:
    """The record's bytes for the quarantine; rebuilt from its fields when the reader had none."""
    if rec.raw is not None:
        return rec.raw[:RAW_PREFIX_BYTES]
    fields: dict[str, Any] = {}
    for key, value in (("id", rec.id_value), ("text", rec.text)):
        if value is not MISSING:
            fields[key] = value[:RAW_PREFIX_BYTES] if isinstance(value, str | bytes) else value
    text = json.dumps(fields, ensure_ascii=False, default=repr)
    return text.encode("utf-8", "backslashreplace")[:RAW_PREFIX_BYTES]


def id_string(value: Any) -> tuple[str | None, str | None]:
    """``(id as a string, None)``, or ``(None, why it is not usable)``."""
    if isinstance(value, bool):
        return ("true" if value else "false"), None
    if isinstance(value, int):
        return str(value), None
    if isinstance(value, float):
        return (json.dumps(value), None) if math.isfinite(value) else (None, f"id is {value}")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"id bytes are not UTF-8: {e}"
    if not isinstance(value, str):
        return None, f"id is a {type(value).__name__}, not a scalar"
    if not value.strip():
        return None, "id is an empty string"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return None, f"id is not valid Unicode: {e.reason}"
    return value, None


class RecordChecker:
    """Validates records of one source and sorts them into documents and quarantine rows.

    Holds the ids seen so far (as 64-bit ints, to find duplicates): the one piece of state that
    grows with the input, about 70 bytes per record that has an id. With ``track_ids=False``
    (a Ray task's checker, which sees one file) repeated ids are left to the step's checker,
    which ``admit``s the task's records in the source's order; each document with an id then
    carries its ``raw`` bytes, for the quarantine row a repeat becomes there.
    """

    def __init__(
        self, source: str, *, max_doc_bytes: int, require_id: bool = False, track_ids: bool = True
    ):
        self.source = source
        self.max_doc_bytes = max_doc_bytes
        self.require_id = require_id
        self.track_ids = track_ids
        self.documents = 0
        self.text_bytes = 0
        self.quarantine_by_reason: Counter[str] = Counter()
        self._seen: set[int] = set()

    @property
    def quarantined(self) -> int:
        return sum(self.quarantine_by_reason.values())

    def check_batch(self, batch: list[RawRecord]) -> tuple[pl.DataFrame, pl.DataFrame]:
        """``(documents, quarantine rows)`` for one batch, in DOCUMENT/QUARANTINE_SCHEMA."""
        doc_schema = DOCUMENT_SCHEMA if self.track_ids else {**DOCUMENT_SCHEMA, "raw": pl.String}
        docs: dict[str, list[Any]] = {k: [] for k in doc_schema}
        bad: dict[str, list[Any]] = {k: [] for k in QUARANTINE_SCHEMA}
        for rec in batch:
            problem = self._check(rec, docs)
            if problem is not None:
                reason, detail = problem
                self.quarantine_by_reason[reason] += 1
                for key, value in (
                    ("source", self.source), ("path", rec.path), ("offset", rec.offset),
                    ("reason", reason), ("detail", detail), ("raw", escape_raw(_record_bytes(rec))),
                ):  # fmt: skip
                    bad[key].append(value)
        return (
            pl.DataFrame(docs, schema=doc_schema),
            pl.DataFrame(bad, schema=QUARANTINE_SCHEMA),
        )

    def admit(self, checked: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """``(documents, quarantine rows)`` of records a ``track_ids=False`` checker judged:
        ``checked`` holds them in the source's order, documents (null ``reason``, ``raw`` when
        they have an id) and quarantine rows together. A repeated id is found here, as
        ``check_batch`` finds it, and every count is kept as ``check_batch`` keeps it."""
        reason, detail = checked["reason"].to_list(), checked["detail"].to_list()
        rows = zip(reason, checked["id"], checked["source_id"], strict=True)
        for i, (why, doc_id, source_id) in enumerate(rows):
            if why is None and source_id is not None:
                problem = self._repeat(doc_id, source_id)
                if problem is not None:
                    reason[i], detail[i] = problem
        checked = checked.with_columns(
            pl.Series("reason", reason, pl.String), pl.Series("detail", detail, pl.String)
        )
        documents = checked.filter(pl.col("reason").is_null()).select(list(DOCUMENT_SCHEMA))
        rejected = checked.filter(pl.col("reason").is_not_null()).select(list(QUARANTINE_SCHEMA))
        self.documents += documents.height
        self.text_bytes += int(documents["text"].str.len_bytes().sum() or 0)
        self.quarantine_by_reason.update(rejected["reason"].to_list())
        return documents, rejected

    def _check(self, rec: RawRecord, docs: dict[str, list[Any]]) -> tuple[str, str] | None:
        """Append ``rec`` to ``docs`` and return None, or return ``(reason, detail)``."""
        if rec.error is not None:
            return rec.error
        problem, size = self._check_text(rec.text)
        if problem is not None:
            return problem
        if rec.id_value is MISSING or rec.id_value is None:
            if self.require_id:
                return MISSING_ID, "the record has no id"
            source_id, key = None, f"at:{rec.locator}"
        else:
            source_id, why = id_string(rec.id_value)
            if source_id is None:
                return BAD_ID, why or "unusable id"
            key = f"id:{source_id}"
        doc_id = document_id(self.source, key)
        if source_id is not None and self.track_ids:
            problem = self._repeat(doc_id, source_id)
            if problem is not None:
                return problem
        for key, value in (
            ("id", doc_id), ("text", rec.text), ("source", self.source),
            ("source_id", source_id), ("path", rec.path), ("offset", rec.offset),
        ):  # fmt: skip
            docs[key].append(value)
        if not self.track_ids:
            docs["raw"].append(None if source_id is None else escape_raw(_record_bytes(rec)))
        self.documents += 1
        self.text_bytes += size
        return None

    def _repeat(self, doc_id: str, source_id: str) -> tuple[str, str] | None:
        """``duplicate_id`` when a record with this id was kept before, else remember it."""
        fingerprint = int(doc_id[-16:], 16)
        if fingerprint in self._seen:
            return DUPLICATE_ID, f"id {source_id[:100]!r} was already seen in this source"
        self._seen.add(fingerprint)
        return None

    def _check_text(self, text: Any) -> tuple[tuple[str, str] | None, int]:
        """``(problem or None, the text's size in UTF-8 bytes)``."""
        if text is MISSING or text is None:
            return (MISSING_TEXT, "the text field is absent or null"), 0
        if not isinstance(text, str):
            return (TEXT_NOT_STRING, f"the text field is a {type(text).__name__}"), 0
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as e:  # lone surrogates, e.g. from a "\ud800" JSON escape
            return (INVALID_UTF8, f"text is not valid Unicode: {e.reason} at {e.start}"), 0
        if size > self.max_doc_bytes:
            return (TOO_LARGE, f"text is {size} bytes > max_doc_bytes {self.max_doc_bytes}"), size
        if not text.strip():
            return (EMPTY_TEXT, "the text is empty or whitespace only"), size
        return None, size

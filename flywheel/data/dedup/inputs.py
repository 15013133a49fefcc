"""The input of ``flywheel dedup``: valid {id, text} records in batches, bad ones as rejects.

    flywheel dedup INPUT --output DIR [--strict]

``read_batches(path, batch_size)`` yields ``Batch(records, rejected)``: ``records`` holds every
column of the valid records, ``rejected`` one row per bad record (``REJECTED_SCHEMA``: the
file, the JSONL line (1-based) or Parquet row (0-based), the reason, a detail and the record's
first bytes, escaped). Every record read lands in exactly one of the two. With ``strict=True``
the first bad record raises ``InputError`` (naming file, line or row, and reason) instead.

A record is valid when it is a JSON object (or a Parquet row) with a ``text`` that is a string
(empty is fine: dedup judges duplicates, not quality) and an ``id`` the ingest id policy
accepts (``flywheel.data.ingest.records``: not null, not an empty string, a non-finite number,
an object or an array). Reasons are the ingest quarantine's, plus ``unsupported_value`` for a
record whose other fields Polars cannot store (e.g. a list mixing numbers and strings).

Blank (empty or whitespace-only) lines are not records, as in the ingest readers: they are
counted in ``ReadCounts.blank_lines`` and never rejected, not even with ``strict``.

Whole-file problems (not Parquet, a truncated .gz, no ``id``/``text`` column, a ``text`` column
that does not hold strings) are not bad records, since how much was lost is unknown: they raise
``InputError``. An OS error while reading raises ``IOFailure``.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from flywheel.data.ingest.files import path_str

# The ingest readers' line reading (gzip/zstd, lines capped in memory) and id policy, reused
# so that dedup and ingest agree on what a record is.
from flywheel.data.ingest.readers import JSON_TYPES, line_cap, open_jsonl, read_lines
from flywheel.data.ingest.records import (
    BAD_ID,
    INVALID_JSON,
    INVALID_UTF8,
    MISSING,
    MISSING_ID,
    MISSING_TEXT,
    NOT_AN_OBJECT,
    TEXT_NOT_STRING,
    TOO_LARGE,
    escape_raw,
    id_string,
)

UNSUPPORTED_VALUE = "unsupported_value"

REJECTED_SCHEMA: dict[str, pl.DataType] = {
    "path": pl.String(),  # the input file
    "line": pl.Int64(),  # JSONL: 1-based line number; null for Parquet
    "row": pl.Int64(),  # Parquet: 0-based row index; null for JSONL
    "reason": pl.String(),  # machine-readable, e.g. "invalid_json"
    "detail": pl.String(),  # the human-readable error
    "raw": pl.String(),  # the record's first bytes, escaped
}

# Longest JSONL line parsed; a longer one is rejected unread as too_large, so that a file with
# no newlines (a binary renamed .jsonl) cannot fill memory. line_cap of a 16 MiB text: ~64 MiB.
MAX_LINE_BYTES = line_cap(16 << 20)

_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")
_OS_ERROR = re.compile(r"\(os error (\d+)\)|\[errno (\d+)\]", re.IGNORECASE)


class InputError(Exception):
    """A problem with the user's input, reported as one line and exit code 2."""


class IOFailure(Exception):
    """An OS error reading or writing ``path``, reported as one line and exit code 1."""

    def __init__(self, verb: str, path: Path, reason: str):
        super().__init__(f"cannot {verb} {path}: {reason}")


def os_error_reason(exc: BaseException) -> str | None:
    """The OS error behind ``exc`` in words ("No space left on device"), or None.

    Polars and pyarrow raise OSError (or ComputeError) with no errno, the OS error only in
    the message ("... (os error 28)", "[errno 13] ..."), so that is parsed too.
    """
    if isinstance(exc, OSError) and exc.errno:
        return exc.strerror or os.strerror(exc.errno)
    m = _OS_ERROR.search(str(exc))
    return os.strerror(int(m.group(1) or m.group(2))) if m else None


@contextmanager
def io_step(verb: str, path: Path) -> Iterator[None]:
    """Turn an OS error in the block, raw or wrapped by polars/pyarrow, into ``IOFailure``."""
    try:
        yield
    except (OSError, pl.exceptions.PolarsError, pa.ArrowException) as e:
        reason = os_error_reason(e)
        if reason is None:
            raise
        raise IOFailure(verb, path, reason) from None


@dataclass
class Batch:
    records: pl.DataFrame  # the valid records, every input column
    rejected: pl.DataFrame  # REJECTED_SCHEMA

    @property
    def size(self) -> int:
        return self.records.height + self.rejected.height


@dataclass
class ReadCounts:
    blank_lines: int = 0  # not records: neither valid nor rejected


def read_batches(
    path: Path, batch_size: int, *, strict: bool = False, counts: ReadCounts | None = None
) -> Iterator[Batch]:
    """Batches of at most ``batch_size`` records (valid + rejected) from JSONL(.gz)/Parquet."""
    counts = counts if counts is not None else ReadCounts()
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        yield from _parquet_batches(path, batch_size, strict)
    elif name.endswith(_JSONL_SUFFIXES):
        yield from _jsonl_batches(path, batch_size, strict, counts)
    else:
        raise InputError(f"unsupported input {path.name}: expected .jsonl[.gz] or .parquet")


def check_record(record: dict[str, Any]) -> tuple[str, str] | None:
    """``(reason, detail)`` when ``record`` is not a valid {id, text} record, else None."""
    text = record.get("text", MISSING)
    if text is MISSING or text is None:
        return MISSING_TEXT, "record has no 'text' field" if text is MISSING else "'text' is null"
    if isinstance(text, bytes):  # a Parquet binary column: the bytes must be UTF-8
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as e:
            return INVALID_UTF8, f"'text' is not UTF-8: {e.reason} at byte {e.start}"
    elif not isinstance(text, str):
        return TEXT_NOT_STRING, f"'text' is {JSON_TYPES.get(type(text), 'an object')}"
    else:
        try:  # lone surrogates, from a "\ud800" JSON escape, cannot be written
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            return INVALID_UTF8, f"'text' is not valid Unicode: {e.reason} at {e.start}"
    if record.get("id") is None:
        return MISSING_ID, "record has no 'id' field" if "id" not in record else "'id' is null"
    _, why = id_string(record["id"])
    return (BAD_ID, why) if why else None


def _reject(
    path: Path, line: int | None, row: int | None, problem: tuple[str, str], raw: bytes
) -> dict[str, Any]:
    reason, detail = problem
    return {"path": path_str(path), "line": line, "row": row, "reason": reason,
            "detail": detail, "raw": escape_raw(raw)}  # fmt: skip


def _strict_error(path: Path, where: str, problem: tuple[str, str]) -> InputError:
    return InputError(f"{path}, {where}: {problem[1]} [{problem[0]}]")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


# --- JSON Lines -----------------------------------------------------------------------------


def _parse(line: bytes, start: int) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """``(the record, its problem or None)``; the same decisions as the ingest readers."""
    if start == 0 and line.startswith(codecs.BOM_UTF8):
        line = line[len(codecs.BOM_UTF8) :]
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        return None, (INVALID_UTF8, f"not UTF-8: {e.reason} at byte {e.start} of the line")
    except (ValueError, RecursionError) as e:  # JSONDecodeError, int too long, too deep
        return None, (INVALID_JSON, f"invalid JSON ({str(e)[:200] or type(e).__name__})")
    if not isinstance(obj, dict):
        return None, (NOT_AN_OBJECT, f"expected a JSON object, got {JSON_TYPES.get(type(obj))}")
    return obj, check_record(obj)


def _jsonl_batches(
    path: Path, batch_size: int, strict: bool, counts: ReadCounts
) -> Iterator[Batch]:
    records: list[dict[str, Any]] = []
    linenos: list[int] = []
    rejected: list[dict[str, Any]] = []
    lineno = 0
    with io_step("read", path):
        raw, stream = open_jsonl(path)
    try:
        with raw, stream:
            for lineno, (start, line, length) in enumerate(read_lines(stream, MAX_LINE_BYTES), 1):
                if length > len(line):  # cut at the cap
                    obj, problem = None, (TOO_LARGE, f"line of {length} bytes > {MAX_LINE_BYTES}")
                elif not line.strip():
                    counts.blank_lines += 1
                    continue
                else:
                    obj, problem = _parse(line, start)
                if problem is not None:
                    if strict:
                        raise _strict_error(path, f"line {lineno}", problem)
                    rejected.append(_reject(path, lineno, None, problem, line))
                else:
                    records.append(obj)  # type: ignore[arg-type]
                    linenos.append(lineno)
                if len(records) + len(rejected) >= batch_size:
                    yield _jsonl_batch(path, records, linenos, rejected, strict)
                    records, linenos, rejected = [], [], []
    except (OSError, EOFError, zlib.error, zstandard.ZstdError) as e:
        reason = os_error_reason(e)
        if reason is not None:
            raise IOFailure("read", path, reason) from None
        raise InputError(f"cannot read {path} after line {lineno}: {_first_line(e)}") from None
    if records or rejected:
        yield _jsonl_batch(path, records, linenos, rejected, strict)


def _jsonl_batch(
    path: Path,
    records: list[dict[str, Any]],
    linenos: list[int],
    rejected: list[dict[str, Any]],
    strict: bool,
) -> Batch:
    try:
        frame = _frame(records)
    except (pl.exceptions.PolarsError, TypeError, ValueError):
        frame = _frame_without_unsupported(path, records, linenos, rejected, strict)
    return Batch(frame, pl.DataFrame(rejected, schema=REJECTED_SCHEMA))


def _frame(records: list[dict[str, Any]]) -> pl.DataFrame:
    # all rows are scanned for the schema, so a column's type does not depend on its first rows
    return pl.from_dicts(records, infer_schema_length=None)


def _frame_without_unsupported(
    path: Path,
    records: list[dict[str, Any]],
    linenos: list[int],
    rejected: list[dict[str, Any]],
    strict: bool,
) -> pl.DataFrame:
    """The batch's frame once the records Polars cannot store, even alone, are rejected.

    Only runs when building the whole batch failed, so the common case pays nothing.
    """
    good: list[dict[str, Any]] = []
    for record, lineno in zip(records, linenos, strict=True):
        try:
            _frame([record])
        except (pl.exceptions.PolarsError, TypeError, ValueError) as e:
            reason = INVALID_UTF8 if isinstance(e, UnicodeError) else UNSUPPORTED_VALUE
            problem = (reason, f"a field cannot be stored: {_first_line(e)}")
            if strict:
                raise _strict_error(path, f"line {lineno}", problem) from None
            text = json.dumps(record, ensure_ascii=False, default=repr)[:400]
            raw = text.encode("utf-8", "backslashreplace")
            rejected.append(_reject(path, lineno, None, problem, raw))
        else:
            good.append(record)
    try:
        return _frame(good)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as e:  # each fine alone
        raise InputError(
            f"{path}, lines {linenos[0]}-{linenos[-1]}: the records' fields have types that "
            f"do not combine: {_first_line(e)}"
        ) from None


# --- Parquet ----------------------------------------------------------------------------------


def _parquet_batches(path: Path, batch_size: int, strict: bool) -> Iterator[Batch]:
    file = _open_parquet(path)
    row = 0
    try:
        for batch in file.iter_batches(batch_size=batch_size):
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            yield _parquet_batch(path, frame, row, strict)
            row += frame.height
    except (OSError, pa.ArrowException) as e:
        reason = os_error_reason(e)
        if reason is not None:
            raise IOFailure("read", path, reason) from None
        raise InputError(f"cannot read {path} after row {row}: {_first_line(e)}") from None
    finally:
        file.close()


def _open_parquet(path: Path) -> pq.ParquetFile:
    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-Parquet files
        reason = os_error_reason(e)
        if reason is not None:
            raise IOFailure("read", path, reason) from None
        raise InputError(f"cannot read {path} as Parquet: {_first_line(e)}") from None
    schema = file.schema_arrow
    missing = [c for c in ("id", "text") if c not in schema.names]
    if missing:
        file.close()
        columns = ", ".join(schema.names)
        raise InputError(f"{path} has no {missing[0]!r} column (columns: {columns})")
    text, id_ = schema.field("text").type, schema.field("id").type
    if isinstance(text, pa.DictionaryType):
        text = text.value_type
    t = pa.types
    if not (t.is_string(text) or t.is_large_string(text) or t.is_binary(text)
            or t.is_large_binary(text) or t.is_null(text)):  # fmt: skip
        file.close()
        raise InputError(f"{path}: column 'text' holds {text}, not strings")
    if t.is_nested(id_):
        file.close()
        raise InputError(f"{path}: column 'id' holds {id_}, not scalar ids")
    return file


def _parquet_batch(path: Path, frame: pl.DataFrame, row0: int, strict: bool) -> Batch:
    """Split one row batch: rows ``_suspects`` flags are checked one by one in Python."""
    suspects = _suspects(frame).arg_true().to_list()
    bad: list[int] = []
    rejected: list[dict[str, Any]] = []
    ids, texts = frame["id"], frame["text"]
    for i in suspects:
        problem = check_record({"id": ids[i], "text": texts[i]})
        if problem is None:
            continue
        if strict:
            raise _strict_error(path, f"row {row0 + i}", problem)
        bad.append(i)
        excerpt = {"id": ids[i], "text": texts[i][:200] if texts[i] is not None else None}
        raw = json.dumps(excerpt, ensure_ascii=False, default=repr).encode("utf-8", "replace")
        rejected.append(_reject(path, None, row0 + i, problem, raw))
    keep = ~pl.Series(range(frame.height)).is_in(bad) if bad else None
    return Batch(
        frame if keep is None else frame.filter(keep),
        pl.DataFrame(rejected, schema=REJECTED_SCHEMA),
    )


def _suspects(frame: pl.DataFrame) -> pl.Series:
    """Rows that may fail ``check_record`` (a superset, computed vectorized)."""
    ids, texts = frame["id"], frame["text"]
    if texts.dtype == pl.Binary:  # only Python can tell which bytes are UTF-8
        return pl.Series([True] * frame.height)
    suspect = texts.is_null() | ids.is_null()
    if ids.dtype == pl.Binary:
        return pl.Series([True] * frame.height)
    if ids.dtype.is_float():
        suspect |= ~ids.is_finite().fill_null(False)
    if ids.dtype in (pl.String, pl.Categorical, pl.Enum):
        # \s is Unicode White_Space; Python's str.strip also strips \x1c-\x1f
        suspect |= ids.cast(pl.String).str.contains(r"^[\s\x1c-\x1f]*$").fill_null(False)
    return suspect

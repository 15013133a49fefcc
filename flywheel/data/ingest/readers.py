"""Readers: stream a source's input as batches of raw records.

Every reader is a generator over files in sorted order, holding at most one record (JSONL,
text files) or one Parquet row batch at a time, and ``read_batches`` groups the records into
lists of at most ``batch_rows``; memory is bounded by the batch size, never the input size.

A record a reader cannot parse (bad UTF-8, bad JSON, an oversized line) still becomes a
``RawRecord``, with ``error`` set, so that it is quarantined and counted rather than lost.
Whole-file failures (a truncated .gz, a file that is not Parquet, a missing text column) are
not bad records: how much was lost is unknown, so they stop the run with ``SourceReadError``.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import io
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from flywheel.core.settings.sources import (
    JsonlSource,
    ParquetSource,
    PythonEnvSource,
    SourceSpec,
    TextFilesSource,
)
from flywheel.data.ingest.files import ReadStats, path_str, read_file_record
from flywheel.data.ingest.python_env import iter_python_env
from flywheel.data.ingest.records import (
    INVALID_JSON,
    INVALID_UTF8,
    MISSING,
    NOT_AN_OBJECT,
    RAW_PREFIX_BYTES,
    TOO_LARGE,
    RawRecord,
)

_GLOB_CHARS = frozenset("*?[")
JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}  # fmt: skip

T = TypeVar("T")


class SourceReadError(RuntimeError):
    """A whole input file could not be read (corrupt, truncated, wrong schema)."""


def line_cap(max_doc_bytes: int) -> int:
    """Longest JSONL line parsed; longer ones are quarantined unread as ``too_large``.

    Four times the text cap plus 64 KiB, so that a text within max_doc_bytes written with
    ``ensure_ascii`` escapes (up to 3x for emoji) and other fields still fits.
    """
    return 4 * max_doc_bytes + 65_536


def _relative(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when under it (stable if the tree moves), else absolute."""
    try:
        return path_str(path.relative_to(base))
    except ValueError:
        return path_str(path)


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


def resolve_files(source: str, pattern: str, base_dir: Path) -> list[Path]:
    """The files a path or glob names, sorted; FileNotFoundError when there are none."""
    p = _resolve(pattern, base_dir)
    if _GLOB_CHARS & set(str(p)):
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if not os.path.isdir(f))
    elif p.is_dir():
        raise FileNotFoundError(
            f"source {source!r}: {pattern!r} ({p}) is a directory; give a file or a glob"
        )
    else:
        files = [p] if p.exists() else []
    if not files:
        raise FileNotFoundError(f"source {source!r}: no input files match {pattern!r} ({p})")
    return files


def source_files(source: SourceSpec, base_dir: Path) -> list[Path]:
    """The input files ``source`` reads, sorted; FileNotFoundError when none match.

    ``python_env`` has no input files of its own (it reads the Python installation): ``[]``;
    fingerprint it by the installed distributions instead.
    """
    base_dir = Path(base_dir).absolute()
    if isinstance(source, JsonlSource | ParquetSource):
        return resolve_files(source.name, source.path, base_dir)
    if isinstance(source, TextFilesSource):
        return _text_files(source, base_dir)[1]
    return []


def batched(records: Iterable[RawRecord], n: int) -> Iterator[list[RawRecord]]:
    """Lists of at most ``n`` records, consuming ``records`` lazily."""
    if n < 1:
        raise ValueError(f"batch size must be >= 1, got {n}")
    it = iter(records)
    while batch := list(itertools.islice(it, n)):
        yield batch


def read_batches(
    source: SourceSpec,
    *,
    base_dir: Path,
    batch_rows: int = 2000,
    max_doc_bytes: int = 1_000_000,
    stats: ReadStats | None = None,
) -> Iterator[list[RawRecord]]:
    """The source's records in batches of at most ``batch_rows``.

    Input paths are resolved now, so a missing path fails here, before anything is written.
    """
    stats = stats if stats is not None else ReadStats()
    base_dir = Path(base_dir).absolute()  # so the path column is absolute provenance
    records: Iterator[RawRecord]
    if isinstance(source, JsonlSource):
        files = resolve_files(source.name, source.path, base_dir)
        records = _iter_jsonl(source, files, base_dir, line_cap(max_doc_bytes), stats)
    elif isinstance(source, ParquetSource):
        files = resolve_files(source.name, source.path, base_dir)
        records = _iter_parquet(source, files, base_dir, batch_rows, stats)
    elif isinstance(source, TextFilesSource):
        root, files = _text_files(source, base_dir)
        records = _iter_text_files(root, files, max_doc_bytes, stats)
    elif isinstance(source, PythonEnvSource):
        records = iter_python_env(source, max_doc_bytes, stats)
    else:
        raise TypeError(f"not a source spec: {source!r}")
    return batched(records, batch_rows)


def file_records(
    source: SourceSpec,
    path: Path,
    *,
    base_dir: Path,
    batch_rows: int = 2000,
    max_doc_bytes: int = 1_000_000,
    stats: ReadStats,
) -> Iterator[RawRecord]:
    """The records of one of ``source``'s files (``source_files``), exactly as
    ``read_batches`` reads them there: how a Ray task reads its file (``engine: ray``)."""
    base_dir = Path(base_dir).absolute()
    if isinstance(source, JsonlSource):
        return _iter_jsonl(source, [path], base_dir, line_cap(max_doc_bytes), stats)
    if isinstance(source, ParquetSource):
        return _iter_parquet(source, [path], base_dir, batch_rows, stats)
    if isinstance(source, TextFilesSource):
        return _iter_text_files(_resolve(source.path, base_dir), [path], max_doc_bytes, stats)
    raise TypeError(f"source {source.name!r} ({source.kind}) is not read file by file")


# --- JSON Lines -----------------------------------------------------------------------------


def open_jsonl(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """``(the file, the decompressed stream)``; compression is chosen by suffix."""
    raw = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed by the caller
    name = path.name.lower()
    if name.endswith(".gz"):
        return raw, gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if name.endswith((".zst", ".zstd")):
        # read_across_frames: files written by parallel compressors hold many frames.
        reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True, closefd=False
        )
        return raw, io.BufferedReader(reader, buffer_size=1 << 20)  # type: ignore[arg-type,return-value]
    return raw, raw


def _iter_jsonl(
    spec: JsonlSource, files: list[Path], base_dir: Path, cap: int, stats: ReadStats
) -> Iterator[RawRecord]:
    for path in files:
        raw, stream = open_jsonl(path)
        offset = 0
        try:
            with raw, stream:
                for start, line, length in read_lines(stream, cap):
                    offset = start + length
                    if length > len(line):  # the line was cut at the cap
                        locator = f"{_relative(path, base_dir)}:{start}"
                        error = (TOO_LARGE, f"line of {length} bytes > line cap {cap}")
                        yield RawRecord(path_str(path), start, locator, error=error, raw=line)
                    elif not line.strip():
                        stats.skipped["blank_line"] += 1
                    else:
                        yield _parse_line(spec, path, base_dir, start, line)
                stats.bytes_read += _tell(raw, offset)
        except (OSError, EOFError, zstandard.ZstdError) as e:
            raise SourceReadError(
                f"source {spec.name!r}: cannot read {path} after byte {offset}: {e}"
            ) from e
        stats.files += 1


def read_lines(stream: BinaryIO, cap: int) -> Iterator[tuple[int, bytes, int]]:
    """``(byte offset, line, full length)``; a line over ``cap`` comes back cut to its head.

    ``readline`` with a limit never holds more than ``cap`` bytes of one line; the rest of an
    oversized line is read in chunks and thrown away.
    """
    offset = 0
    while line := stream.readline(cap + 1):
        length = len(line)
        if length > cap and not line.endswith(b"\n"):
            line = line[:RAW_PREFIX_BYTES]
            while chunk := stream.readline(1 << 20):
                length += len(chunk)
                if chunk.endswith(b"\n"):
                    break
        yield offset, line, length
        offset += length


def _tell(f: BinaryIO, default: int) -> int:
    try:
        return f.tell()
    except OSError:  # a pipe
        return default


def _parse_line(
    spec: JsonlSource, path: Path, base_dir: Path, start: int, line: bytes
) -> RawRecord:
    rec = RawRecord(
        path_str(path), start, f"{_relative(path, base_dir)}:{start}", raw=line[:RAW_PREFIX_BYTES]
    )
    body = line[len(codecs.BOM_UTF8) :] if start == 0 and line.startswith(codecs.BOM_UTF8) else line
    try:
        obj = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        rec.error = (INVALID_UTF8, f"{e.reason} at byte {e.start} of the line")
        return rec
    except (ValueError, RecursionError) as e:  # JSONDecodeError, int too long, too deep
        rec.error = (INVALID_JSON, str(e)[:200] or type(e).__name__)
        return rec
    if not isinstance(obj, dict):
        rec.error = (NOT_AN_OBJECT, f"the line is {JSON_TYPES.get(type(obj), 'a value')}")
        return rec
    rec.text = obj.get(spec.text_field, rec.text)
    if spec.id_field is not None:
        rec.id_value = obj.get(spec.id_field, rec.id_value)
    return rec


# --- Parquet ----------------------------------------------------------------------------------


def parquet_files(
    name: str,
    files: list[Path],
    stats: ReadStats,
    rows: Callable[[pq.ParquetFile, Path], Iterator[T]],
) -> Iterator[T]:
    """``rows(file, path)`` of each Parquet file in turn, counted in ``stats``; a file that is
    not Parquet or cannot be read is a ``SourceReadError`` naming source ``name`` and the file
    (the image plane's Parquet sources read their files the same way)."""
    for path in files:
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-Parquet files
            raise SourceReadError(f"source {name!r}: {path} is not readable Parquet: {e}") from e
        try:
            yield from rows(pf, path)
        except (OSError, pa.ArrowException) as e:
            raise SourceReadError(f"source {name!r}: cannot read {path}: {e}") from e
        finally:
            pf.close()
        stats.files += 1
        stats.bytes_read += path.stat().st_size


def _iter_parquet(
    spec: ParquetSource, files: list[Path], base_dir: Path, batch_rows: int, stats: ReadStats
) -> Iterator[RawRecord]:
    def rows(pf: pq.ParquetFile, path: Path) -> Iterator[RawRecord]:
        return _parquet_rows(spec, pf, path, base_dir, batch_rows)

    return parquet_files(spec.name, files, stats, rows)


def _parquet_rows(
    spec: ParquetSource, pf: pq.ParquetFile, path: Path, base_dir: Path, batch_rows: int
) -> Iterator[RawRecord]:
    names = pf.schema_arrow.names
    if spec.text_field not in names:
        raise SourceReadError(
            f"source {spec.name!r}: {path} has no column {spec.text_field!r} "
            f"(columns: {', '.join(names)})"
        )
    # An absent id column is like an absent id field in JSON: records are keyed by position.
    id_col = spec.id_field if spec.id_field in names else None
    columns = [spec.text_field] + ([id_col] if id_col and id_col != spec.text_field else [])
    row = 0
    # iter_batches decodes one row group at a time and hands out slices of batch_rows.
    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
        texts = batch.column(spec.text_field).to_pylist()
        ids = batch.column(id_col).to_pylist() if id_col else itertools.repeat(MISSING)
        for text, id_value in zip(texts, ids, strict=False):
            yield _parquet_record(path, base_dir, row, text, id_value)
            row += 1


def _parquet_record(path: Path, base_dir: Path, row: int, text: Any, id_value: Any) -> RawRecord:
    locator = f"{_relative(path, base_dir)}:{row}"
    rec = RawRecord(path_str(path), row, locator, text=text, id_value=id_value)
    if isinstance(text, bytes):  # a binary column: the bytes must be UTF-8 text
        try:
            rec.text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            rec.error = (INVALID_UTF8, f"{e.reason} at byte {e.start} of the text")
            rec.raw = text[:RAW_PREFIX_BYTES]
    return rec


# --- Text files -------------------------------------------------------------------------------


def _text_files(spec: TextFilesSource, base_dir: Path) -> tuple[Path, list[Path]]:
    root = _resolve(spec.path, base_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"source {spec.name!r}: {spec.path!r} ({root}) is not a directory")
    files = sorted(p for p in root.glob(spec.glob) if p.is_file())
    if not files:
        raise FileNotFoundError(
            f"source {spec.name!r}: no files match {spec.glob!r} under {spec.path!r} ({root})"
        )
    return root, files


def _iter_text_files(
    root: Path, files: list[Path], max_doc_bytes: int, stats: ReadStats
) -> Iterator[RawRecord]:
    for p in files:
        rel = path_str(p.relative_to(root))
        yield read_file_record(p, rel, rel, max_doc_bytes, stats)

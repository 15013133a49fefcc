"""Readers of image-text sources: Parquet (image bytes or paths) and WebDataset tar shards.

    python -c "from flywheel.data.images.sources import *; help(read_image_batches)"

Each reader yields ``RawImageRecord``s: the encoded image bytes as found (not decoded here),
the caption, the record's id, where it came from, or the reason the record cannot even be
assembled (no image, an image path that does not exist, an image over ``max_bytes``, a caption
that is not UTF-8), which the checker quarantines. Memory is bounded by one batch of records.

Parquet: the image column holds bytes, a path (relative to ``image_root``, else to the Parquet
file's directory), or a struct with ``bytes`` and/or ``path`` (Hugging Face's ``Image``
feature). WebDataset: members are grouped into samples by key, the member name up to the
first dot of its base name ("a/b/0001.jpg" and "a/b/0001.txt" are sample "a/b/0001" with
extensions "jpg" and "txt"), as ``webdataset`` does; a sample's members must be adjacent. The
key is the record's id. Members of other extensions (.json, .cls) are skipped, counted in
``ReadStats.skipped``. As for text sources, a whole-file failure (not Parquet, not a tar, a
tar cut short) stops the run with ``SourceReadError``: how much was lost is unknown.
"""

from __future__ import annotations

import io
import itertools
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from flywheel.core.settings.images import (
    AnyImageSource,
    ImageParquetSource,
    VisualCountingSource,
    WebDatasetSource,
)
from flywheel.data.ingest.files import ReadStats, path_str
from flywheel.data.ingest.readers import SourceReadError, batched, parquet_files, resolve_files
from flywheel.data.ingest.records import INVALID_UTF8, MISSING, RAW_PREFIX_BYTES, TOO_LARGE

MISSING_IMAGE = "missing_image"
IMAGE_NOT_FOUND = "image_not_found"


@dataclass(slots=True)
class RawImageRecord:
    """One image-text record as a reader found it, before any decoding or validation."""

    path: str  # the Parquet file or tar shard
    offset: int  # Parquet row, or byte offset of the sample's first tar member
    locator: str  # "<file>:<row or key>", keys the record when it has no id
    data: bytes | None = None  # the encoded image
    text: Any = MISSING
    id_value: Any = MISSING
    error: tuple[str, str] | None = None
    ref: str | None = None  # the image's path or member name, for the quarantine


def read_image_batches(
    source: AnyImageSource,
    *,
    base_dir: Path,
    batch_rows: int = 256,
    max_bytes: int = 50_000_000,
    stats: ReadStats | None = None,
) -> Iterator[list[RawImageRecord]]:
    """The source's records in batches of at most ``batch_rows``; input paths are resolved
    now, so a missing path fails here, before anything is written."""
    stats = stats if stats is not None else ReadStats()
    if isinstance(source, VisualCountingSource):  # rendered, no files
        return batched(_iter_visual(source, stats), batch_rows)  # type: ignore[arg-type]
    base_dir = Path(base_dir).absolute()
    files = resolve_files(source.name, source.path, base_dir)
    if isinstance(source, ImageParquetSource):
        records = _iter_parquet(source, files, batch_rows, max_bytes, stats)
    elif isinstance(source, WebDatasetSource):
        records = _iter_webdataset(source, files, max_bytes, stats)
    else:
        raise TypeError(f"not an image source spec: {source!r}")
    return batched(records, batch_rows)  # type: ignore[arg-type]


# --- the built-in visual counting task ---------------------------------------------------------
def _iter_visual(spec: VisualCountingSource, stats: ReadStats) -> Iterator[RawImageRecord]:
    """``spec.count`` rendered task images as PNG, each captioned with its shape count; the
    id is the task's ``image_id`` (what held-out images are recognised by downstream)."""
    from flywheel.data.visual import shape_examples

    locator = f"visual_counting:{spec.name}"
    examples = shape_examples(spec.count, spec.min_objects, spec.max_objects, spec.size, spec.seed)
    for row, example in enumerate(examples):
        buffer = io.BytesIO()
        example["image"].save(buffer, format="PNG")
        rec = RawImageRecord(locator, row, f"{locator}:{row}", id_value=example["id"])
        rec.data, rec.text = buffer.getvalue(), example["answer"]
        stats.bytes_read += len(rec.data)
        yield rec
    stats.files += 1


# --- Parquet ---------------------------------------------------------------------------------
def _iter_parquet(
    spec: ImageParquetSource, files: list[Path], batch_rows: int, max_bytes: int, stats: ReadStats
) -> Iterator[RawImageRecord]:
    def rows(pf: pq.ParquetFile, path: Path) -> Iterator[RawImageRecord]:
        return _parquet_rows(spec, pf, path, batch_rows, max_bytes)

    return parquet_files(spec.name, files, stats, rows)


def _parquet_rows(
    spec: ImageParquetSource, pf: pq.ParquetFile, path: Path, batch_rows: int, max_bytes: int
) -> Iterator[RawImageRecord]:
    names = pf.schema_arrow.names
    for field in (spec.image_field, spec.text_field):
        if field not in names:
            raise SourceReadError(
                f"source {spec.name!r}: {path} has no column {field!r} "
                f"(columns: {', '.join(names)})"
            )
    id_col = spec.id_field if spec.id_field in names else None
    columns = list(
        dict.fromkeys([spec.image_field, spec.text_field, *([id_col] if id_col else [])])
    )
    image_root = Path(spec.image_root) if spec.image_root else path.parent
    if not image_root.is_absolute():
        image_root = path.parent / image_root
    row = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
        images = batch.column(spec.image_field).to_pylist()
        texts = batch.column(spec.text_field).to_pylist()
        ids = batch.column(id_col).to_pylist() if id_col else itertools.repeat(MISSING)
        for image, text, id_value in zip(images, texts, ids, strict=False):
            rec = RawImageRecord(path_str(path), row, f"{path_str(path)}:{row}", id_value=id_value)
            rec.text = _caption(rec, text)
            _parquet_image(rec, image, image_root, max_bytes)
            yield rec
            row += 1


def _parquet_image(rec: RawImageRecord, value: Any, root: Path, max_bytes: int) -> None:
    """Fill ``rec.data`` from an image cell (bytes, path, or {bytes, path}), or its error."""
    if isinstance(value, dict):  # Hugging Face's Image feature: bytes win over the path
        value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
    if isinstance(value, bytes | bytearray):
        if len(value) > max_bytes:  # keep only its head, for the quarantine
            rec.data = bytes(value[:RAW_PREFIX_BYTES])
            _fail(rec, TOO_LARGE, f"image is {len(value)} bytes > max_bytes {max_bytes}")
        else:
            rec.data = bytes(value)
        return
    if not isinstance(value, str) or not value:
        what = "null" if value is None else f"a {type(value).__name__}"
        _fail(rec, MISSING_IMAGE, f"the image field is {what}, not bytes or a path")
        return
    rec.ref = value
    file = Path(value) if Path(value).is_absolute() else root / value
    try:
        size = file.stat().st_size
        if size > max_bytes:
            _fail(rec, TOO_LARGE, f"image file {file} is {size} bytes > max_bytes {max_bytes}")
            return
        rec.data = file.read_bytes()
    except OSError as e:  # absent, a directory, unreadable
        _fail(rec, IMAGE_NOT_FOUND, f"cannot read image file {file}: {e.strerror or e}")


# --- WebDataset ------------------------------------------------------------------------------
def _iter_webdataset(
    spec: WebDatasetSource, files: list[Path], max_bytes: int, stats: ReadStats
) -> Iterator[RawImageRecord]:
    for path in files:
        try:
            # "r|*": a stream (members in order, no seeking), gzip or plain detected
            with tarfile.open(path, mode="r|*") as tar:
                yield from _tar_samples(spec, tar, path, max_bytes, stats)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise SourceReadError(
                f"source {spec.name!r}: {path} is not a readable tar shard (cut short or "
                f"corrupt; the records before the damage are not enough to trust it): {e}"
            ) from e
        stats.files += 1
        stats.bytes_read += path.stat().st_size


def _member_key(name: str) -> tuple[str, str]:
    """(sample key, extension): "a/b/0001.seg.jpg" -> ("a/b/0001", "seg.jpg")."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def _tar_samples(
    spec: WebDatasetSource, tar: tarfile.TarFile, path: Path, max_bytes: int, stats: ReadStats
) -> Iterator[RawImageRecord]:
    wanted = set(spec.image_extensions) | set(spec.text_extensions)
    key: str | None = None
    members: dict[str, tuple[bytes | None, int, str]] = {}  # ext -> (data, size, name)
    offset = 0
    for member in tar:
        if not member.isfile():
            continue
        k, ext = _member_key(member.name)
        if k != key:
            if key is not None:
                yield _sample(spec, path, key, offset, members, max_bytes)
            key, members, offset = k, {}, member.offset
        if ext not in wanted:
            stats.skipped[f"member_.{ext}"] += 1
            continue
        big = member.size > max_bytes  # not read: the stream skips it
        data = None if big else tar.extractfile(member).read()  # type: ignore[union-attr]
        members[ext] = (data, member.size, member.name)
    if key is not None:
        yield _sample(spec, path, key, offset, members, max_bytes)


def _sample(
    spec: WebDatasetSource,
    path: Path,
    key: str,
    offset: int,
    members: dict[str, tuple[bytes | None, int, str]],
    max_bytes: int,
) -> RawImageRecord:
    rec = RawImageRecord(path_str(path), offset, f"{path_str(path)}:{key}", id_value=key)
    text_ext = next((e for e in spec.text_extensions if e in members), None)
    if text_ext is not None:
        rec.text = _caption(rec, members[text_ext][0])
    image_ext = next((e for e in spec.image_extensions if e in members), None)
    if image_ext is None:
        found = ", ".join(sorted(members)) or "none"
        _fail(rec, MISSING_IMAGE, f"sample {key!r} has no image member (extensions: {found})")
        return rec
    data, size, name = members[image_ext]
    rec.ref = name
    if data is None:
        _fail(rec, TOO_LARGE, f"image member {name} is {size} bytes > max_bytes {max_bytes}")
    rec.data = data
    return rec


# --- shared ----------------------------------------------------------------------------------
def _caption(rec: RawImageRecord, value: Any) -> Any:
    """A caption as text; bytes (a tar member, a binary column) must be UTF-8."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(rec, INVALID_UTF8, f"caption: {e.reason} at byte {e.start}")
        return MISSING


def _fail(rec: RawImageRecord, reason: str, detail: str) -> None:
    """Record the record's first problem (a later one does not replace it)."""
    if rec.error is None:
        rec.error = (reason, detail)

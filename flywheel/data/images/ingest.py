"""Ingest an image-text source: records into a shard set, images into the store, the rest into
quarantine with a reason.

    python -c "from flywheel.data.images.ingest import *; help(ingest_images)"

As for text (``flywheel.data.ingest``): every record read ends up either as a row of the shard
set or as a row of its ``quarantine`` table (QUARANTINE_SCHEMA: source, path, offset, reason,
detail, raw), so ``records + quarantined == records read`` always holds, and the version is
made current only at the end. Checks, in order, the first failure naming the reason: what the
reader could not assemble (``missing_image``, ``image_not_found``, ``too_large``,
``invalid_utf8``), the caption (``missing_text``, ``text_not_string``, ``invalid_utf8``,
``too_large``, ``empty_text``), the id (``bad_id``, ``missing_id``), the image
(``flywheel.data.images.decode``: ``undecodable_image``, ``truncated_image``,
``decompression_bomb``, ``unsupported_mode``, ``too_large``), and last ``duplicate_id`` (the
first VALID record with an id keeps it). Record ids are ``document_id(source, key)``.

A row references its image by ``image_id`` (the decoded pixels' hash); the encoded bytes go to
the ``ImageStore`` once. The row also carries the image's ``phash`` (computed while the pixels
are decoded anyway, so dedup never decodes again), its size, format and original mode.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from flywheel.core.settings.images import (
    ImageDecodeSettings,
    ImageParquetSource,
    WebDatasetSource,
)
from flywheel.core.shards import ShardSet, ShardWriter
from flywheel.data.documents import QUARANTINE_SCHEMA
from flywheel.data.images.decode import IMAGE_REASONS, DecodedImage, ImageProblem, decode_image
from flywheel.data.images.phash import grey_thumbnail, phashes_from_thumbnails
from flywheel.data.images.sources import (
    IMAGE_NOT_FOUND,
    MISSING_IMAGE,
    RawImageRecord,
    read_image_batches,
)
from flywheel.data.images.store import ImageStore
from flywheel.data.ingest.files import ReadStats
from flywheel.data.ingest.records import (
    BAD_ID,
    DUPLICATE_ID,
    EMPTY_TEXT,
    INVALID_UTF8,
    MISSING,
    MISSING_ID,
    MISSING_TEXT,
    TEXT_NOT_STRING,
    TOO_LARGE,
    document_id,
    escape_raw,
    id_string,
)
from flywheel.data.ingest.run import QUARANTINE, QuarantineSpill

log = logging.getLogger(__name__)

QUARANTINE_REASONS = tuple(
    dict.fromkeys(
        (MISSING_IMAGE, IMAGE_NOT_FOUND, INVALID_UTF8, MISSING_TEXT, TEXT_NOT_STRING, TOO_LARGE,
         EMPTY_TEXT, BAD_ID, MISSING_ID, *IMAGE_REASONS, DUPLICATE_ID)
    )
)  # fmt: skip

IMAGE_RECORD_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),  # "<source>-<16 hex>", as documents' ids
    "image_id": pl.String(),  # 32 hex: the decoded pixels' hash, the store's name for them
    "text": pl.String(),  # the caption
    "source": pl.String(),
    "source_id": pl.String(),  # the record's own id (WebDataset: the sample key)
    "path": pl.String(),  # the Parquet file or tar shard
    "offset": pl.Int64(),  # Parquet row, or byte offset of the sample in the tar
    "width": pl.Int64(),
    "height": pl.Int64(),
    "format": pl.String(),  # e.g. "JPEG", "PNG": the encoding kept in the store
    "mode": pl.String(),  # the mode as stored, before conversion to RGB
    "bytes": pl.Int64(),  # encoded size
    "phash": pl.UInt64(),  # imagehash's 64-bit pHash (flywheel.data.images.phash)
}


@dataclass(frozen=True)
class ImageIngestResult:
    """What one image ingest run produced."""

    shardset: ShardSet
    records: int
    quarantined: int
    quarantine_by_reason: dict[str, int]
    images_stored: int  # new files in the store (an image seen before is not stored again)
    bytes_read: int
    seconds: float
    files: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


class ImageRecordChecker:
    """Sorts raw image records of one source into rows and quarantine rows."""

    def __init__(
        self,
        source: str,
        store: ImageStore,
        settings: ImageDecodeSettings,
        *,
        max_text_bytes: int = 100_000,
        require_id: bool = False,
    ):
        self.source, self.store, self.settings = source, store, settings
        self.max_text_bytes, self.require_id = max_text_bytes, require_id
        self.records = 0
        self.stored = 0
        self.quarantine_by_reason: Counter[str] = Counter()
        self._seen: set[int] = set()

    @property
    def quarantined(self) -> int:
        return sum(self.quarantine_by_reason.values())

    def check_batch(self, batch: list[RawImageRecord]) -> tuple[pl.DataFrame, pl.DataFrame]:
        """``(records, quarantine rows)`` in IMAGE_RECORD_SCHEMA / QUARANTINE_SCHEMA."""
        rows: dict[str, list[Any]] = {k: [] for k in IMAGE_RECORD_SCHEMA if k != "phash"}
        thumbs: list[np.ndarray] = []
        bad: dict[str, list[Any]] = {k: [] for k in QUARANTINE_SCHEMA}
        for rec in batch:
            problem = self._check(rec, rows, thumbs)
            if problem is None:
                continue
            reason, detail = problem
            self.quarantine_by_reason[reason] += 1
            raw = rec.data if rec.data is not None else (rec.ref or repr(rec.text)).encode()
            for key, value in (
                ("source", self.source), ("path", rec.path), ("offset", rec.offset),
                ("reason", reason), ("detail", detail), ("raw", escape_raw(raw)),
            ):  # fmt: skip
                bad[key].append(value)
        rows["phash"] = phashes_from_thumbnails(np.stack(thumbs)) if thumbs else []
        return (
            pl.DataFrame(rows, schema=IMAGE_RECORD_SCHEMA),
            pl.DataFrame(bad, schema=QUARANTINE_SCHEMA),
        )

    def _check(
        self, rec: RawImageRecord, rows: dict[str, list[Any]], thumbs: list[np.ndarray]
    ) -> tuple[str, str] | None:
        """Append ``rec`` to ``rows`` (its image to the store) and return None, or return
        ``(reason, detail)``."""
        if rec.error is not None:
            return rec.error
        if (problem := self._check_text(rec.text)) is not None:
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
        if rec.data is None:  # readers set an error whenever they have no bytes
            return MISSING_IMAGE, "the record has no image bytes"
        decoded = decode_image(rec.data, self.settings)
        if isinstance(decoded, ImageProblem):
            return decoded.reason, decoded.detail
        rec_id = document_id(self.source, key)
        if source_id is not None:
            fingerprint = int(rec_id[-16:], 16)
            if fingerprint in self._seen:
                return DUPLICATE_ID, f"id {source_id[:100]!r} was already seen in this source"
            self._seen.add(fingerprint)
        self._append(rows, rec, rec_id, source_id, decoded)
        thumbs.append(grey_thumbnail(decoded.image))
        self.stored += self.store.put(decoded.image_id, rec.data)
        return None

    def _append(self, rows, rec: RawImageRecord, rec_id: str, source_id, d: DecodedImage) -> None:
        for key, value in (
            ("id", rec_id), ("image_id", d.image_id), ("text", rec.text),
            ("source", self.source), ("source_id", source_id), ("path", rec.path),
            ("offset", rec.offset), ("width", d.width), ("height", d.height),
            ("format", d.format), ("mode", d.mode), ("bytes", d.nbytes),
        ):  # fmt: skip
            rows[key].append(value)
        self.records += 1

    def _check_text(self, text: Any) -> tuple[str, str] | None:
        if text is MISSING or text is None:
            return MISSING_TEXT, "the caption is absent or null"
        if not isinstance(text, str):
            return TEXT_NOT_STRING, f"the caption is a {type(text).__name__}"
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as e:
            return INVALID_UTF8, f"caption is not valid Unicode: {e.reason} at {e.start}"
        if size > self.max_text_bytes:
            return TOO_LARGE, f"caption is {size} bytes > max_text_bytes {self.max_text_bytes}"
        if not text.strip():
            return EMPTY_TEXT, "the caption is empty or whitespace only"
        return None


def ingest_images(
    source: ImageParquetSource | WebDatasetSource,
    root: Path,
    store: ImageStore,
    *,
    base_dir: Path,
    settings: ImageDecodeSettings | None = None,
    batch_rows: int = 256,
    shard_rows: int = 50_000,
    max_text_bytes: int = 100_000,
    meta: Mapping[str, Any] | None = None,
) -> ImageIngestResult:
    """Read ``source``, store its images, and commit its records as a new version of the shard
    set at ``root``. Memory: ``batch_rows`` encoded images plus ``shard_rows`` rows (no pixels).
    Raises ``FileNotFoundError`` when no input matches and ``SourceReadError`` when a file is
    unreadable as a whole (nothing is committed then)."""
    settings = settings or ImageDecodeSettings()
    for arg, value in (("batch_rows", batch_rows), ("shard_rows", shard_rows)):
        if value < 1:
            raise ValueError(f"{arg} must be >= 1, got {value}")
    started = time.perf_counter()
    stats = ReadStats()
    batches = read_image_batches(
        source, base_dir=base_dir, batch_rows=batch_rows, max_bytes=settings.max_bytes, stats=stats
    )
    checker = ImageRecordChecker(
        source.name,
        store,
        settings,
        max_text_bytes=max_text_bytes,
        require_id=getattr(source, "require_id", False),
    )
    with ShardWriter(root, shard_rows) as writer:
        writer.write(pl.DataFrame(schema=IMAGE_RECORD_SCHEMA))  # the schema, even if all fail
        spill = QuarantineSpill(writer.staging)
        try:
            for batch in batches:
                records, rejected = checker.check_batch(batch)
                writer.write(records)
                spill.write(rejected)
            writer.write_aux(QUARANTINE, spill.finish())
        finally:
            spill.close()
        by_reason = dict(sorted(checker.quarantine_by_reason.items()))
        shardset = writer.commit(
            source=source.name,
            kind=source.kind,
            spec=source.model_dump(mode="json"),
            decode=settings.model_dump(mode="json"),
            records=checker.records,
            quarantined=checker.quarantined,
            quarantine_by_reason=by_reason,
            images_stored=checker.stored,
            image_store=str(store.root),
            files_read=stats.files,
            bytes_read=stats.bytes_read,
            skipped=dict(sorted(stats.skipped.items())),
            ingest_seconds=round(time.perf_counter() - started, 3),
            **dict(meta or {}),
        )
    result = ImageIngestResult(
        shardset, checker.records, checker.quarantined, by_reason, checker.stored,
        stats.bytes_read, time.perf_counter() - started, stats.files,
        dict(sorted(stats.skipped.items())),
    )  # fmt: skip
    log.info(
        "ingested %s: %d image-text records, %d quarantined %s, %d new images -> %s",
        source.name, result.records, result.quarantined, by_reason, result.images_stored,
        shardset.path,
    )  # fmt: skip
    return result

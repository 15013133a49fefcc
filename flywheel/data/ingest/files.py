"""Whole files as records, and the read statistics every reader reports.

Shared by the file readers (``flywheel.data.ingest.readers``) and the built-in Python
environment corpus (``flywheel.data.ingest.python_env``), which reads files too.
"""

from __future__ import annotations

import codecs
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from flywheel.data.ingest.records import INVALID_UTF8, RAW_PREFIX_BYTES, TOO_LARGE, RawRecord


@dataclass
class ReadStats:
    """What readers report besides records: files and bytes read, non-records skipped."""

    files: int = 0
    bytes_read: int = 0  # on-disk bytes (compressed size for .gz/.zst)
    skipped: Counter[str] = field(default_factory=Counter)  # e.g. blank_line, unparsable_file


def path_str(path: Path) -> str:
    """A path as valid UTF-8 text (undecodable bytes in file names are escaped)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def read_file_record(
    path: Path, id_value: str, locator: str, max_doc_bytes: int, stats: ReadStats
) -> RawRecord:
    """One whole file as one record; a file over the cap is not read beyond its head."""
    rec = RawRecord(path_str(path), 0, locator, id_value=id_value)
    bom = codecs.BOM_UTF8
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        too_large = size > max_doc_bytes + len(bom)
        # Bounded even if the file grew since fstat; the checker sees the excess as too_large.
        data = f.read(RAW_PREFIX_BYTES if too_large else max_doc_bytes + len(bom) + 1)
    stats.files += 1
    stats.bytes_read += len(data)
    rec.raw = data[:RAW_PREFIX_BYTES]
    if too_large:
        rec.error = (TOO_LARGE, f"file is {size} bytes > max_doc_bytes {max_doc_bytes}")
        return rec
    try:
        rec.text = data.removeprefix(bom).decode("utf-8")
    except UnicodeDecodeError as e:
        rec.error = (INVALID_UTF8, f"{e.reason} at byte {e.start} of the file")
    return rec

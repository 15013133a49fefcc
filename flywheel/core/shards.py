"""Parquet shard sets with atomic writes.

A shard set is a directory of Parquet files plus a ``manifest.json``; a shard-set *root*
holds successive versions of one data product and a ``CURRENT`` pointer to the committed one:

    <root>/CURRENT                      -> "v-20261127T101500-1a2b3c4d"
    <root>/v-20261127T101500-1a2b3c4d/part-00000.parquet
    <root>/v-20261127T101500-1a2b3c4d/manifest.json
    <root>/.staging-<uuid>/...          (a writer in progress; never read)

Every file is written under a temporary name and renamed into place (``os.replace`` is atomic
on POSIX), and a version becomes visible only when ``CURRENT`` is replaced after its manifest is
written. A run killed at any point therefore leaves the previous version readable and no partial
shard visible. Readers go through ``CURRENT`` and the manifest, never a directory listing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from flywheel import __version__

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
KEEP_VERSIONS = 2  # committed versions kept per root: the current one and the one before
STALE_STAGING_S = 6 * 3600  # staging dirs older than this are from dead writers


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def atomic_write_parquet(
    df: pl.DataFrame | pl.LazyFrame,
    path: Path,
    compression: str = "zstd",
    row_group_size: int | None = None,
) -> None:
    """Write ``df`` as one Parquet file, visible only once complete (a LazyFrame is streamed).

    ``row_group_size`` caps rows per row group (Polars' default when None); small row groups
    let readers such as ``flywheel.train.loader`` read a file a piece at a time.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        if isinstance(df, pl.LazyFrame):
            df.sink_parquet(
                tmp, compression=compression, statistics=True, row_group_size=row_group_size
            )
        else:
            df.write_parquet(
                tmp, compression=compression, statistics=True, row_group_size=row_group_size
            )
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class ShardSet:
    """A committed, immutable version of a data product."""

    path: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return self.path.name

    @property
    def files(self) -> list[Path]:
        return [self.path / name for name in self.manifest["shards"]]

    @property
    def num_rows(self) -> int:
        return int(self.manifest["num_rows"])

    def scan(self) -> pl.LazyFrame:
        """All shards as one lazy frame (an empty set yields the manifest's schema)."""
        if not self.files:
            schema = {k: _dtype(v) for k, v in self.manifest.get("schema", {}).items()}
            return pl.LazyFrame(schema=schema)
        return pl.scan_parquet(self.files)

    def read(self, columns: list[str] | None = None) -> pl.DataFrame:
        lf = self.scan()
        return (lf.select(columns) if columns else lf).collect()

    def aux(self, name: str) -> pl.DataFrame:
        """An auxiliary table written beside the shards (quarantine, dropped, duplicates)."""
        if name not in self.manifest.get("aux", []):
            raise KeyError(f"shard set {self.path} has no auxiliary table {name!r}")
        return pl.read_parquet(self.path / f"{name}.parquet")

    def iter_batches(self, columns: list[str] | None = None) -> Iterator[pl.DataFrame]:
        """One shard at a time: memory is bounded by the shard size, not the set size."""
        for f in self.files:
            yield pl.read_parquet(f, columns=columns)


def _dtype(name: str) -> pl.DataType:
    simple = {
        "String": pl.String,
        "Int64": pl.Int64,
        "Int32": pl.Int32,
        "UInt64": pl.UInt64,
        "UInt32": pl.UInt32,
        "Float64": pl.Float64,
        "Boolean": pl.Boolean,
    }
    return simple.get(name, pl.String)


def read_current(root: Path) -> ShardSet:
    """The committed version under ``root``; a clear error if none was ever committed."""
    root = Path(root)
    pointer = root / CURRENT
    if not pointer.exists():
        raise FileNotFoundError(
            f"no committed shard set under {root} (missing {CURRENT}); materialize it first"
        )
    path = root / pointer.read_text().strip()
    return ShardSet(path, json.loads((path / MANIFEST).read_text()))


def has_current(root: Path) -> bool:
    return (Path(root) / CURRENT).exists()


class ShardWriter:
    """Writes a new version of a data product as fixed-size shards, then commits it.

    ``write`` buffers rows and flushes a shard every ``shard_rows`` rows, so memory is bounded
    by the shard size. Nothing is visible to readers until ``commit``.
    """

    def __init__(
        self,
        root: Path,
        shard_rows: int = 50_000,
        prefix: str = "part",
        row_group_size: int | None = None,
    ):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shard_rows = shard_rows
        self.row_group_size = row_group_size  # None: Polars' default
        self.prefix = prefix
        self.staging = self.root / f".staging-{uuid.uuid4().hex}"
        self.staging.mkdir()
        self._buffer: list[pl.DataFrame] = []
        self._buffered = 0
        self._shards: list[str] = []
        self._rows = 0
        self._schema: dict[str, str] = {}
        self._aux: list[str] = []
        self._committed = False
        self._clean_stale_staging()

    def _clean_stale_staging(self) -> None:
        now = time.time()
        for d in self.root.glob(".staging-*"):
            if d != self.staging and now - d.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(d, ignore_errors=True)

    def write(self, df: pl.DataFrame) -> None:
        if df.height == 0:
            if not self._schema:
                self._schema = {k: str(v) for k, v in df.schema.items()}
            return
        self._buffer.append(df)
        self._buffered += df.height
        while self._buffered >= self.shard_rows:
            self._flush(self.shard_rows)

    def _flush(self, n: int) -> None:
        frame = pl.concat(self._buffer, how="vertical_relaxed")
        head, tail = frame.head(n), frame.slice(n)
        self._buffer, self._buffered = ([tail] if tail.height else []), tail.height
        name = f"{self.prefix}-{len(self._shards):05d}.parquet"
        atomic_write_parquet(head, self.staging / name, row_group_size=self.row_group_size)
        self._schema = {k: str(v) for k, v in head.schema.items()}
        self._shards.append(name)
        self._rows += head.height

    def write_aux(self, name: str, df: pl.DataFrame | pl.LazyFrame) -> None:
        """Write one auxiliary table (e.g. ``quarantine``) into this version."""
        atomic_write_parquet(
            df, self.staging / f"{name}.parquet", row_group_size=self.row_group_size
        )
        if name not in self._aux:
            self._aux.append(name)

    def commit(self, **metadata: Any) -> ShardSet:
        """Flush the remainder, write the manifest, and make this version current."""
        if self._buffered:
            self._flush(self._buffered)
        version = f"v-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
        manifest = {
            "version": version,
            "shards": self._shards,
            "num_rows": self._rows,
            "schema": self._schema,
            "aux": self._aux,
            "created_at": datetime.now(UTC).isoformat(),
            "code_version": __version__,
            **metadata,
        }
        atomic_write_json(self.staging / MANIFEST, manifest)
        final = self.root / version
        os.replace(self.staging, final)
        atomic_write_bytes(self.root / CURRENT, version.encode())
        self._committed = True
        self._prune()
        return ShardSet(final, manifest)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def _prune(self) -> None:
        versions = sorted(d for d in self.root.glob("v-*") if d.is_dir())
        for old in versions[:-KEEP_VERSIONS]:
            shutil.rmtree(old, ignore_errors=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._committed:
            self.abort()

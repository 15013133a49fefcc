"""Parquet shard sets: data products stored as artifacts (``flywheel.core.artifacts``).

A shard set is one published artifact version whose files are Parquet shards plus optional
auxiliary tables (quarantine, dropped rows, duplicates, held-out rows):

    <root>/CURRENT                      -> "v-20261127T101500123456-1a2b3c4d"
    <root>/v-20261127T101500123456-1a2b3c4d/part-00000.parquet
    <root>/v-20261127T101500123456-1a2b3c4d/quarantine.parquet
    <root>/v-20261127T101500123456-1a2b3c4d/manifest.json   (sha256 + bytes of every file)
    <root>/.staging-<uuid>/...          (a writer in progress; never read)

The layout (shard names, row count, schema, auxiliary tables) is kept in the manifest's
``meta`` beside what the producer adds; ``ShardWriter.commit`` publishes through
``artifacts.publish``, so versions, ``inputs``, verification, ``CURRENT`` and retention are the
artifact store's. Readers go through ``CURRENT`` and the manifest, never a directory listing;
``read_current`` checks sizes (not hashes) so that a truncated shard is caught cheaply.

Tested by ``pytest tests/core/test_artifacts.py``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from flywheel.core import artifacts


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
    artifacts.fsync_dir(path.parent)


@dataclass(frozen=True)
class ShardSet:
    """A committed, immutable version of a data product: a view over its artifact."""

    artifact: artifacts.Artifact

    @property
    def path(self) -> Path:
        return self.artifact.path

    @property
    def version(self) -> str:
        return self.artifact.version

    @property
    def inputs(self) -> dict[str, Any]:
        return self.artifact.inputs

    @property
    def manifest(self) -> dict[str, Any]:
        """The producer's metadata and the layout (``num_rows``, ``shards``, ``schema``,
        ``aux``) as one flat record, with ``version``, ``created_at``, ``code_version`` and
        ``inputs`` beside them; per-file hashes stay in ``artifact.manifest``."""
        m = self.artifact.manifest
        top = {k: m[k] for k in ("version", "created_at", "code_version", "inputs") if k in m}
        return {**m.get("meta", {}), **top}

    @property
    def files(self) -> list[Path]:
        return [self.path / name for name in self.artifact.meta["shards"]]

    @property
    def num_rows(self) -> int:
        return int(self.artifact.meta["num_rows"])

    @property
    def schema(self) -> dict[str, str]:
        """Column name -> Polars dtype name, as written (kept even when the set is empty)."""
        return self.artifact.meta.get("schema", {})

    @property
    def aux_names(self) -> list[str]:
        return self.artifact.meta.get("aux", [])

    def scan(self) -> pl.LazyFrame:
        """All shards as one lazy frame (an empty set yields the manifest's schema)."""
        if not self.files:
            return pl.LazyFrame(schema={k: _dtype(v) for k, v in self.schema.items()})
        return pl.scan_parquet(self.files)

    def read(self, columns: list[str] | None = None) -> pl.DataFrame:
        lf = self.scan()
        return (lf.select(columns) if columns else lf).collect()

    def aux(self, name: str) -> pl.DataFrame:
        """An auxiliary table written beside the shards (quarantine, dropped, duplicates)."""
        if name not in self.aux_names:
            raise KeyError(f"shard set {self.path} has no auxiliary table {name!r}")
        return pl.read_parquet(self.path / f"{name}.parquet")

    def iter_batches(self, columns: list[str] | None = None) -> Iterator[pl.DataFrame]:
        """One shard at a time: memory is bounded by the shard size, not the set size."""
        for f in self.files:
            yield pl.read_parquet(f, columns=columns)


@dataclass
class Built:
    """A stage's published shard set, the flat metadata to report about it (numbers and
    short strings, which Dagster plots), and whether it was reused: the same build key found
    the current set, and nothing was written."""

    shardset: ShardSet
    metadata: dict[str, Any]
    reused: bool = False

    @property
    def manifest(self) -> dict[str, Any]:
        return self.shardset.manifest

    @property
    def path(self) -> Path:
        return self.shardset.path

    @property
    def version(self) -> str:
        return self.shardset.version


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


def read_current(root: Path, deep: bool = False) -> ShardSet:
    """The committed version under ``root``, its files' sizes checked (``deep``: hashes too).

    ``artifacts.NotPublishedError`` (a ``FileNotFoundError``) if none was ever committed; a
    damaged current version falls back to the newest older good one, as for every artifact.
    """
    return ShardSet(artifacts.read_current(root, deep=deep))


def has_current(root: Path) -> bool:
    return artifacts.has_current(root)


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
        self.shard_rows = shard_rows
        self.row_group_size = row_group_size  # None: Polars' default
        self.prefix = prefix
        self.staging = artifacts.staging_dir(self.root)  # also removes dead writers' dirs
        self._buffer: list[pl.DataFrame] = []
        self._buffered = 0
        self._shards: list[str] = []
        self._rows = 0
        self._schema: dict[str, str] = {}
        self._aux: list[str] = []
        self._committed = False

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

    def commit(self, inputs: Mapping[str, Any] | None = None, **metadata: Any) -> ShardSet:
        """Flush the remainder and publish this version (manifest with hashes, then CURRENT).

        ``inputs`` maps each product this set was built from to the version read.
        """
        if self._buffered:
            self._flush(self._buffered)
        layout = {"shards": self._shards, "num_rows": self._rows, "schema": self._schema}
        layout["aux"] = self._aux
        if clash := sorted(layout.keys() & metadata.keys()):
            raise ValueError(f"commit(): {clash} are the shard set's own manifest fields")
        artifact = artifacts.publish(self.root, self.staging, inputs=inputs, **layout, **metadata)
        self._committed = True
        return ShardSet(artifact)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._committed:
            self.abort()

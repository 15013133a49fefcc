"""The lookup rows of the Ray index's uncommitted parts, held in memory until they are
written as one file per partition (``flywheel.data.dedup.ray_index``).

    python -c "from flywheel.data.dedup.pending import PendingRows; print(PendingRows.__doc__)"

Why. Each ``RayDedupIndex.add`` used to write its batch's lookup rows at once, one file per
partition and family (3 x P files a batch, each fsynced), and every later batch of the run
opened all of them again: with 128 partitions most of a run's time went to small files. The
rows of a batch that no manifest names yet need not be on disk: they are kept here, looked
up in memory (one join per family a batch, not one per partition), and written when the
run commits (or when ``SPILL_DOCS`` documents have piled up, to bound the memory: ~200 B a
document), as ONE file per partition for all the parts written since, named by the first of
them as compaction names a merged file. The disk layout and the answers are unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from flywheel.data.dedup import partitions

SPILL_DOCS = 1 << 18  # documents whose rows are held before they are written: ~50 MB


class PendingRows:
    """Lookup rows (with their partition ``p``) of the parts written since the last write."""

    def __init__(self, bands: int, rows: int, count: int) -> None:
        self.layout = (bands, rows, count)
        self.frames: dict[str, list[pl.DataFrame]] = {f: [] for f in partitions.FAMILIES}
        self.docs = 0

    def add(self, first: int, columns: dict[str, Any]) -> None:
        """Hold the rows of the documents ``columns`` (orders first, first + 1, ...)."""
        for family, frame in partitions.frames(first, columns, *self.layout).items():
            self.frames[family].append(frame)
        self.docs += len(columns["id"])

    def _all(self, family: str) -> pl.DataFrame:
        if len(self.frames[family]) > 1:  # chunks joined, not copied: no O(rows) per batch
            table = pl.concat(self.frames[family], rechunk=False)
            self.frames[family] = [table.rechunk() if table.n_chunks() > 32 else table]
        return self.frames[family][0]

    def first_orders(self, family: str, values: list) -> dict:
        """{value: its earliest order here} for ids ("ids") or exact hashes ("exact")."""
        if not self.frames[family] or not values:
            return {}
        column = "id" if family == "ids" else "exact"
        rows = self._all(family)
        wanted = pl.DataFrame({column: pl.Series(values, dtype=rows[column].dtype)})
        table = rows.join(wanted, on=column, how="semi").group_by(column).agg(pl.col("order").min())
        return dict(zip(table[column].to_list(), table["order"].to_list(), strict=True))

    def buckets(self, new: pl.DataFrame) -> pl.DataFrame:
        """The held band rows (order, band, key, p) in the buckets of ``new``'s rows."""
        if not self.frames["band"]:
            return pl.DataFrame(schema={**partitions.SCHEMAS["band"], "p": pl.Int64})
        return self._all("band").join(new.select("band", "key"), on=["band", "key"], how="semi")

    def write(self, path: Path, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write the held rows as one file per partition and family (durably: a manifest
        may name them next); ``entries`` are the parts they belong to, all of them and only
        them, each naming no partition file yet (``unwritten``). Returns those entries, the
        first naming the files as merged ones. Nothing is held after."""
        if not entries:
            return entries
        written = partitions.write_merged(path, entries, {f: self._all(f) for f in self.frames})
        self.frames = {f: [] for f in partitions.FAMILIES}
        self.docs = 0
        return written


def unwritten(entry: dict[str, Any]) -> dict[str, Any]:
    """A part's entry that names no partition file yet (its rows are held here)."""
    return {**entry, **{f: [] for f in partitions.FAMILIES}}


def group_of(p: np.ndarray, groups: int) -> np.ndarray:
    """Which of ``groups`` tasks reads band partition ``p``: a task reads many partitions
    in one scan (a bucket lies whole in one partition, so pairs found per group equal
    pairs found per partition), rather than one task per partition."""
    return np.asarray(p, dtype=np.int64) % groups

"""Stream packed sequences to a training loop: deterministic, sharded by rank, resumable.

    python -c "from flywheel.train import loader; from flywheel.core import shards
    s = shards.read_current('.flywheel/data/tokenized_dataset')
    print(next(iter(loader.PackedStream(loader.train_files(s), 8)))['input_ids'].shape)"

(``flywheel train pretrain`` streams its data through it.)

``PackedStream`` reads the ``input_ids`` column written by ``flywheel.train.packing`` one Parquet
row group at a time. Its order is a pure function of (files, seed, epoch), computed from Parquet
metadata alone, so every rank and every DataLoader worker agrees on it without talking, and
resuming is arithmetic, not replay:

- epoch ``e``'s stream is the row groups in an order permuted by ``(seed, e)``, each group's
  rows permuted by ``(seed, e, group)``, concatenated (a two-level shuffle: global enough for
  packed pre-training data, whose rows are already mixed documents, while reads stay whole
  row groups);
- global batch ``g`` of an epoch is stream rows ``[g*B*W, (g+1)*B*W)`` and rank ``r`` takes
  ``[g*B*W + r*B, g*B*W + (r+1)*B)``; an epoch has ``N // (B*W)`` batches, the remainder is
  left out so every rank takes the same number of steps;
- a rank's ``b``-th batch is batch ``b % per_epoch`` of epoch ``b // per_epoch``, so
  ``start_batch=b`` resumes exactly where a run that consumed ``b`` batches stopped.

With ``loop=False`` (evaluation) only epoch 0 is streamed; with one process
(``world_size == 1``) the last rows also come as one final partial batch, so evaluation sees
every row.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from flywheel.core.shards import ShardSet

COLUMN = "input_ids"


def train_files(shardset: ShardSet) -> list[Path]:
    """The train split of a ``tokenized_dataset`` shard set."""
    return shardset.files


def heldout_files(shardset: ShardSet) -> list[Path]:
    """The held-out split of a ``tokenized_dataset`` shard set (its ``heldout`` aux table)."""
    if "heldout" not in shardset.manifest.get("aux", []):
        raise KeyError(f"shard set {shardset.path} has no held-out table; is it tokenized_dataset?")
    return [shardset.path / "heldout.parquet"]


def seq_len_of(files: list[Path]) -> int:
    """Tokens per row, from the first file's schema (``fixed_size_list[seq_len]``)."""
    if not files:
        raise ValueError("no files given: the packed split is empty")
    field = pq.read_schema(files[0]).field(COLUMN)
    if not pa.types.is_fixed_size_list(field.type):
        raise ValueError(f"{files[0]}: column {COLUMN!r} is {field.type}, not fixed-size rows")
    return field.type.list_size


class PackedStream(IterableDataset):
    """Batches ``{"input_ids": LongTensor[micro_batch, seq_len]}`` for one rank.

    Use ``DataLoader(stream, batch_size=None, num_workers=n)``: worker ``w`` of ``n`` makes
    the batches ``b`` with ``(b - start_batch) % n == w``, and the DataLoader's round-robin
    over workers then returns them in order ``start_batch, start_batch + 1, ...``.

    Memory: a reader holds only the row groups the current batch spans (two when
    ``micro_batch`` is at most the row-group size); ``max_groups_held`` and ``groups_read``
    count them for the process that iterates (in workers, each worker's own copy).
    """

    def __init__(
        self,
        files: list[Path],
        micro_batch: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start_batch: int = 0,
        loop: bool = True,
    ):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if micro_batch < 1 or start_batch < 0:
            raise ValueError(f"micro_batch ({micro_batch}) >= 1 and start_batch >= 0 required")
        self.files = [Path(f) for f in files]
        self.seq_len = seq_len_of(self.files)
        self.micro_batch, self.rank, self.world_size = micro_batch, rank, world_size
        self.seed, self.shuffle, self.start_batch, self.loop = seed, shuffle, start_batch, loop
        # (file index, row group index) and row count of every row group, from footers only.
        self.groups: list[tuple[int, int]] = []
        sizes = []
        for fi, f in enumerate(self.files):
            meta = pq.read_metadata(f)
            for gi in range(meta.num_row_groups):
                self.groups.append((fi, gi))
                sizes.append(meta.row_group(gi).num_rows)
        self.sizes = np.array(sizes, dtype=np.int64)
        self.num_rows = int(self.sizes.sum())
        self.batches_per_epoch = self._per_epoch()
        self.groups_read = 0
        self.max_groups_held = 0
        self._order: tuple[int, np.ndarray, np.ndarray] | None = None  # last epoch's order

    def _per_epoch(self) -> int:
        span = self.micro_batch * self.world_size
        full = self.num_rows // span
        if not self.loop and self.world_size == 1:
            # Evaluation on one process: a final partial batch covers the remainder.
            full = -(-self.num_rows // self.micro_batch)
        if full == 0:
            raise ValueError(
                f"{self.num_rows} rows in {len(self.files)} file(s) are fewer than one global "
                f"batch of micro_batch {self.micro_batch} x world_size {self.world_size} = "
                f"{span}; pack more data or lower the batch size"
            )
        return full

    # -- the order: a pure function of (seed, epoch) ------------------------------------------
    def _epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Row-group order of an epoch and the stream offset at which each one starts."""
        if self._order is None or self._order[0] != epoch:
            order = np.arange(len(self.groups))
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(order)
            offsets = np.concatenate([[0], np.cumsum(self.sizes[order])])
            self._order = (epoch, order, offsets)
        return self._order[1], self._order[2]

    def _row_order(self, epoch: int, group: int) -> np.ndarray:
        n = int(self.sizes[group])
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch, group]).permutation(n)

    def batch_rows(self, b: int) -> list[tuple[int, int, np.ndarray]]:
        """Which rows make this rank's batch ``b``: (epoch, group, row indices) pieces."""
        epoch, g = divmod(b, self.batches_per_epoch)
        if not self.loop and epoch > 0:
            raise IndexError(f"batch {b} is past the single epoch (loop=False)")
        order, offsets = self._epoch_order(epoch)
        lo = g * self.micro_batch * self.world_size + self.rank * self.micro_batch
        hi = min(lo + self.micro_batch, self.num_rows)
        pieces = []
        k = int(np.searchsorted(offsets, lo, side="right")) - 1
        while lo < hi:
            group = int(order[k])
            start, stop = lo - offsets[k], min(hi, offsets[k + 1]) - offsets[k]
            if stop > start:  # an empty row group contributes nothing and is never read
                pieces.append((epoch, group, self._row_order(epoch, group)[start:stop]))
            lo = int(offsets[k] + stop)
            k += 1
        return pieces

    # -- reading ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        end = self.batches_per_epoch if not self.loop else None
        cache: dict[int, np.ndarray] = {}
        b = self.start_batch + worker
        while end is None or b < end:
            pieces = self.batch_rows(b)
            needed = {group for _, group, _ in pieces}
            for group in list(cache):  # evict what this batch no longer spans
                if group not in needed:
                    del cache[group]
            rows = []
            for _, group, idx in pieces:
                if group not in cache:
                    cache[group] = self._read_group(group)
                    self.max_groups_held = max(self.max_groups_held, len(cache))
                rows.append(cache[group][idx])
            batch = np.concatenate(rows).astype(np.int64)
            yield {COLUMN: torch.from_numpy(batch)}
            b += workers

    def _read_group(self, group: int) -> np.ndarray:
        fi, gi = self.groups[group]
        table = pq.ParquetFile(self.files[fi]).read_row_group(gi, columns=[COLUMN])
        self.groups_read += 1
        values = table.column(COLUMN).combine_chunks().flatten().to_numpy()
        return values.reshape(-1, self.seq_len)

    def describe(self) -> dict[str, Any]:
        """Numbers a training log should show once."""
        return {
            "rows": self.num_rows,
            "seq_len": self.seq_len,
            "row_groups": len(self.groups),
            "batches_per_epoch": self.batches_per_epoch,
            "rows_left_out_per_epoch": self.num_rows
            - min(self.num_rows, self.batches_per_epoch * self.micro_batch * self.world_size),
        }

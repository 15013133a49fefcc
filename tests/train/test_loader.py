"""PackedStream: disjoint rank shards, worker order, exact resume, per-epoch shuffles, memory.

The files are real Parquet written as ``flywheel.train.packing`` writes them; every token of row
``r`` is ``r``, so a batch says which rows it holds.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from flywheel.core.shards import ShardWriter, atomic_write_parquet
from flywheel.train.loader import PackedStream, heldout_files, seq_len_of, train_files
from flywheel.train.packing import _rows_frame

SEQ = 8


def _write(tmp_path: Path, n_rows: int, file_rows: int, group_rows: int) -> list[Path]:
    files = []
    for k, lo in enumerate(range(0, n_rows, file_rows)):
        ids = np.arange(lo, min(lo + file_rows, n_rows), dtype=np.int32)
        rows = np.repeat(ids[:, None], SEQ, axis=1)
        path = tmp_path / f"part-{k:05d}.parquet"
        atomic_write_parquet(_rows_frame(rows, SEQ), path, row_group_size=group_rows)
        files.append(path)
    return files


def _row_ids(batches) -> list[list[int]]:
    out = []
    for batch in batches:
        x = batch["input_ids"]
        assert x.dtype.is_floating_point is False and x.shape[1] == SEQ
        assert (x == x[:, :1]).all()  # rows arrive whole
        out.append(x[:, 0].tolist())
    return out


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return _write(tmp_path, n_rows=203, file_rows=70, group_rows=16)  # 3 files, 14 groups


def test_ranks_partition_an_epoch_through_dataloader_workers(files: list[Path]) -> None:
    micro, world = 3, 2
    seen: list[int] = []
    for rank in range(world):
        ds = PackedStream(files, micro, rank=rank, world_size=world, seed=7)
        per_epoch = ds.batches_per_epoch
        assert per_epoch == 203 // (micro * world)
        loader = DataLoader(ds, batch_size=None, num_workers=2)
        batches = _row_ids(islice(loader, per_epoch))
        assert all(len(b) == micro for b in batches)
        # The workers' round robin gives exactly the single-process order.
        single = _row_ids(islice(PackedStream(files, micro, rank, world, seed=7), per_epoch))
        assert batches == single
        seen += [r for b in batches for r in b]
    assert len(seen) == len(set(seen)) == 203 - 203 % (micro * world)
    assert set(seen) <= set(range(203))


def test_resume_gives_exactly_the_tail(files: list[Path]) -> None:
    ds = PackedStream(files, 4, rank=1, world_size=2, seed=3)
    total = 2 * ds.batches_per_epoch + 5  # crosses two epoch boundaries
    full = _row_ids(islice(ds, total))
    for k in (0, 1, ds.batches_per_epoch - 1, ds.batches_per_epoch + 2):
        resumed = PackedStream(files, 4, rank=1, world_size=2, seed=3, start_batch=k)
        loader = DataLoader(resumed, batch_size=None, num_workers=2)
        assert _row_ids(islice(loader, total - k)) == full[k:]


def test_resume_reads_no_skipped_data(tmp_path: Path) -> None:
    files = _write(tmp_path, n_rows=4000, file_rows=1000, group_rows=50)  # 80 row groups
    ds = PackedStream(files, 8, start_batch=10 * 4000 // 8 + 123, seed=1)  # epoch 10
    next(iter(ds))
    assert ds.groups_read <= 2


def test_epochs_reshuffle_and_seeds_repeat(files: list[Path]) -> None:
    ds = PackedStream(files, 5, seed=11)
    n = ds.batches_per_epoch
    batches = _row_ids(islice(ds, 2 * n))
    epoch0 = [r for b in batches[:n] for r in b]
    epoch1 = [r for b in batches[n:] for r in b]
    assert epoch0 != epoch1
    assert len(set(epoch0)) == len(epoch0) == n * 5  # an epoch never repeats a row
    assert epoch0 != sorted(epoch0)  # rows are shuffled, not only row groups
    assert _row_ids(islice(PackedStream(files, 5, seed=11), 2 * n)) == batches
    assert _row_ids(islice(PackedStream(files, 5, seed=12), n)) != batches[:n]


def test_no_shuffle_is_file_order(files: list[Path]) -> None:
    ds = PackedStream(files, 10, shuffle=False)
    assert _row_ids(islice(ds, 3)) == [list(range(k, k + 10)) for k in (0, 10, 20)]


def test_single_epoch_on_one_process_keeps_the_partial_batch(files: list[Path]) -> None:
    ds = PackedStream(files, 10, seed=5, loop=False)
    batches = _row_ids(DataLoader(ds, batch_size=None, num_workers=2))
    assert [len(b) for b in batches] == [10] * 20 + [3]
    assert sorted(r for b in batches for r in b) == list(range(203))
    # With several ranks, one epoch is the full global batches only.
    two = PackedStream(files, 10, rank=1, world_size=2, loop=False)
    assert [len(b) for b in _row_ids(two)] == [10] * 10


def test_memory_is_bounded_by_two_row_groups(tmp_path: Path) -> None:
    small = _write(tmp_path / "small", n_rows=500, file_rows=500, group_rows=32)
    large = _write(tmp_path / "large", n_rows=8000, file_rows=1000, group_rows=32)
    for files in (small, large):
        ds = PackedStream(files, 12, seed=2)
        for _ in islice(ds, 2 * ds.batches_per_epoch):
            assert ds.max_groups_held <= 2
        # Each group is read about once per epoch, not once per batch.
        assert ds.groups_read <= 2 * (2 * len(ds.groups) + 1)


def test_seq_len_comes_from_the_schema(files: list[Path]) -> None:
    assert seq_len_of(files) == SEQ == PackedStream(files, 2).seq_len
    assert PackedStream(files, 2).describe()["row_groups"] == 5 + 5 + 4


def test_clear_errors(tmp_path: Path, files: list[Path]) -> None:
    with pytest.raises(ValueError, match="no files"):
        PackedStream([], 4)
    with pytest.raises(ValueError, match=r"203 rows .* 3 file\(s\) .* 64 x world_size 4 = 256"):
        PackedStream(files, 64, world_size=4)
    empty = tmp_path / "empty.parquet"
    atomic_write_parquet(_rows_frame(np.empty((0, SEQ), np.int32), SEQ), empty)
    with pytest.raises(ValueError, match="0 rows"):
        PackedStream([empty], 1, loop=False)
    with pytest.raises(ValueError, match="rank 2"):
        PackedStream(files, 4, rank=2, world_size=2)


def test_split_helpers_name_the_files(tmp_path: Path) -> None:
    rows = np.zeros((5, SEQ), np.int32)
    writer = ShardWriter(tmp_path / "set", shard_rows=3)
    writer.write(_rows_frame(rows, SEQ))
    writer.write_aux("heldout", _rows_frame(rows[:2], SEQ))
    shards = writer.commit()
    assert train_files(shards) == shards.files and len(shards.files) == 2
    assert heldout_files(shards) == [shards.path / "heldout.parquet"]
    assert PackedStream(heldout_files(shards), 4, loop=False).num_rows == 2

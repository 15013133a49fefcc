"""flywheel.core.shards: atomic files, versioned shard sets, abort on failure, pruning."""

from __future__ import annotations

import os
import time
from pathlib import Path

import polars as pl
import pytest

from flywheel.core import shards
from flywheel.core.shards import (
    CURRENT,
    KEEP_VERSIONS,
    MANIFEST,
    ShardWriter,
    atomic_write_bytes,
    atomic_write_parquet,
    has_current,
    read_current,
)


def _frame(start: int, n: int) -> pl.DataFrame:
    return pl.DataFrame({"i": list(range(start, start + n)), "s": [f"r{i}" for i in range(n)]})


def _commit(root: Path, df: pl.DataFrame, shard_rows: int = 1000, **meta) -> shards.ShardSet:
    with ShardWriter(root, shard_rows) as w:
        w.write(df)
        return w.commit(**meta)


def _half_written(data: bytes):
    """A writer that leaves a partial file at its target, then fails (a full disk, a crash)."""

    def write(self, path, *args, **kwargs):
        Path(path).write_bytes(data)
        raise OSError(28, "No space left on device")

    return write


@pytest.mark.parametrize("lazy", [False, True])
def test_atomic_write_parquet_failure_leaves_no_file(tmp_path, monkeypatch, lazy):
    target = tmp_path / "d" / "part-00000.parquet"
    cls = pl.LazyFrame if lazy else pl.DataFrame
    method = "sink_parquet" if lazy else "write_parquet"
    monkeypatch.setattr(cls, method, _half_written(b"PAR1 half a file"))
    df = _frame(0, 10)
    with pytest.raises(OSError, match="No space"):
        atomic_write_parquet(df.lazy() if lazy else df, target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary file left behind either


def test_atomic_write_parquet_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "t.parquet"
    atomic_write_parquet(_frame(0, 3), target)
    monkeypatch.setattr(pl.DataFrame, "write_parquet", _half_written(b"PAR1 garbage"))
    with pytest.raises(OSError):
        atomic_write_parquet(_frame(100, 3), target)
    monkeypatch.undo()
    assert pl.read_parquet(target).equals(_frame(0, 3))
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_atomic_write_parquet_lazy_frame_streams(tmp_path):
    atomic_write_parquet(_frame(0, 5).lazy(), tmp_path / "x.parquet")
    assert pl.read_parquet(tmp_path / "x.parquet").equals(_frame(0, 5))


def test_atomic_write_bytes_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "CURRENT"
    atomic_write_bytes(target, b"v-old")

    def failing_replace(src, dst):
        raise OSError("crash before rename")

    monkeypatch.setattr(shards.os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"v-new")
    monkeypatch.undo()
    assert target.read_bytes() == b"v-old" and [p.name for p in tmp_path.iterdir()] == ["CURRENT"]


def test_writer_splits_into_shards_and_commits(tmp_path):
    root = tmp_path / "root"
    with ShardWriter(root, shard_rows=3) as w:
        w.write(_frame(0, 4))
        w.write(_frame(4, 6))
        w.write_aux("quarantine", pl.DataFrame({"reason": ["x"]}))
        s = w.commit(source="test")
    assert s.num_rows == 10 and s.manifest["source"] == "test"
    assert [len(b) for b in s.iter_batches()] == [3, 3, 3, 1]
    assert s.read()["i"].to_list() == list(range(10))
    assert s.aux("quarantine")["reason"].to_list() == ["x"]
    with pytest.raises(KeyError):
        s.aux("dropped")
    assert read_current(root) == s and (root / CURRENT).read_text() == s.version
    assert not list(root.glob(".staging-*"))


def test_exception_aborts_and_current_still_points_to_old_version(tmp_path):
    root = tmp_path / "root"
    old = _commit(root, _frame(0, 5))
    with pytest.raises(RuntimeError, match="mid-write"), ShardWriter(root, shard_rows=2) as w:
        w.write(_frame(100, 7))  # three shards already flushed to staging
        assert len(list(w.staging.glob("part-*.parquet"))) == 3
        raise RuntimeError("mid-write")
    assert read_current(root).version == old.version
    assert read_current(root).read().equals(_frame(0, 5))
    assert [p.name for p in root.glob("v-*")] == [old.version]
    assert not list(root.glob(".staging-*"))


def test_leaving_without_commit_aborts(tmp_path):
    root = tmp_path / "root"
    old = _commit(root, _frame(0, 1))
    with ShardWriter(root) as w:
        w.write(_frame(0, 3))
    assert read_current(root).version == old.version and not list(root.glob(".staging-*"))


def test_keep_versions_prunes_old_versions(tmp_path):
    root = tmp_path / "root"
    sets = [_commit(root, _frame(i * 10, 2), n=i) for i in range(KEEP_VERSIONS + 2)]
    kept = sorted(p.name for p in root.glob("v-*"))
    assert kept == [s.version for s in sets[-KEEP_VERSIONS:]]
    assert read_current(root).manifest["n"] == KEEP_VERSIONS + 1
    # The version before the current one is still complete and readable.
    previous = sets[-2]
    assert (
        shards.ShardSet(previous.path, previous.manifest)
        .read()
        .equals(_frame(previous.manifest["n"] * 10, 2))
    )


def test_empty_shard_set_keeps_its_schema(tmp_path):
    root = tmp_path / "root"
    with ShardWriter(root) as w:
        w.write(pl.DataFrame(schema={"id": pl.String(), "offset": pl.Int64()}))
        s = w.commit()
    assert s.num_rows == 0 and s.files == []
    assert read_current(root).read().schema == pl.Schema({"id": pl.String(), "offset": pl.Int64()})


def test_read_current_without_commit_is_a_clear_error(tmp_path):
    assert not has_current(tmp_path)
    with pytest.raises(FileNotFoundError, match="no committed shard set"):
        read_current(tmp_path)


def test_stale_staging_dirs_are_cleaned(tmp_path):
    root = tmp_path / "root"
    stale, fresh = root / ".staging-dead", root / ".staging-alive"
    stale.mkdir(parents=True)
    fresh.mkdir()
    old = time.time() - shards.STALE_STAGING_S - 60
    os.utime(stale, (old, old))
    _commit(root, _frame(0, 1))
    assert not stale.exists() and fresh.exists()
    assert (read_current(root).path / MANIFEST).exists()

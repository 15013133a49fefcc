"""flywheel.core.shards over the artifact store: atomic files, versioned shard sets with
sha256 manifests, verification, abort on failure, retention."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl
import pytest

from flywheel.core import artifacts, shards
from flywheel.core.artifacts import (
    CURRENT,
    KEEP_VERSIONS,
    MANIFEST,
    ArtifactError,
    atomic_write_bytes,
)
from flywheel.core.shards import ShardWriter, atomic_write_parquet, has_current, read_current


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

    monkeypatch.setattr(artifacts.os, "replace", failing_replace)
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


def test_shard_set_manifest_hashes_every_file_and_records_inputs(tmp_path):
    root = tmp_path / "root"
    with ShardWriter(root, shard_rows=3) as w:
        w.write(_frame(0, 5))
        w.write_aux("quarantine", pl.DataFrame({"reason": ["x"]}))
        s = w.commit(inputs={"raw_web": "v-a", "tokenizer": "v-b"}, source="test")
    on_disk = json.loads((s.path / MANIFEST).read_text())
    assert on_disk == s.artifact.manifest
    names = {"part-00000.parquet", "part-00001.parquet", "quarantine.parquet"}
    assert set(on_disk["files"]) == names
    for name in names:
        info = on_disk["files"][name]
        assert info["bytes"] == (s.path / name).stat().st_size and len(info["sha256"]) == 64
    assert on_disk["inputs"] == {"raw_web": "v-a", "tokenizer": "v-b"} == s.inputs
    assert on_disk["meta"]["shards"] == ["part-00000.parquet", "part-00001.parquet"]
    assert on_disk["meta"]["num_rows"] == 5 and on_disk["meta"]["aux"] == ["quarantine"]
    # The flat view callers read: layout, producer metadata, version and inputs together.
    assert s.manifest["inputs"] == s.inputs and s.manifest["version"] == s.version
    assert (s.manifest["num_rows"], s.manifest["source"]) == (5, "test")
    assert s.schema == {"i": "Int64", "s": "String"}


def test_truncated_shard_is_detected_and_named(tmp_path, caplog):
    root = tmp_path / "root"
    good = _commit(root, _frame(0, 5), shard_rows=2)
    bad = _commit(root, _frame(100, 5), shard_rows=2)
    shard = bad.path / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])  # a copy cut short, a disk that filled up
    with pytest.raises(ArtifactError, match=r"part-00001.parquet has \d+ bytes, expected \d+"):
        artifacts.verify(bad.path, deep=False)
    # Readers check sizes: the damaged current set is not read; the previous good one is.
    with caplog.at_level(logging.ERROR):
        assert read_current(root).version == good.version
    assert f"{bad.version} is corrupt: part-00001.parquet has" in caplog.text
    assert read_current(root).read().equals(_frame(0, 5))


def test_corrupt_shard_with_no_good_version_is_an_error(tmp_path):
    root = tmp_path / "root"
    s = _commit(root, _frame(0, 5), shard_rows=2)
    (s.path / "part-00002.parquet").write_bytes(b"PAR1")
    with pytest.raises(ArtifactError, match="part-00002.parquet has 4 bytes.*no older good"):
        read_current(root)


def test_same_size_damage_needs_a_deep_read(tmp_path):
    root = tmp_path / "root"
    s = _commit(root, _frame(0, 5))
    shard = s.path / "part-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert read_current(root).version == s.version  # sizes only: cheap, misses bit flips
    with pytest.raises(ArtifactError, match="part-00000.parquet fails its sha256"):
        read_current(root, deep=True)


def test_commit_rejects_metadata_that_shadows_the_layout(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(ValueError, match="num_rows"), ShardWriter(root) as w:
        w.write(_frame(0, 2))
        w.commit(num_rows=7)
    assert not has_current(root) and not list(root.glob(".staging-*"))


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


def test_retention_keeps_exactly_keep_versions(tmp_path):
    root = tmp_path / "root"
    sets = [_commit(root, _frame(i * 10, 2), n=i) for i in range(KEEP_VERSIONS + 2)]
    kept = sorted(p.name for p in root.glob("v-*"))
    assert len(kept) == KEEP_VERSIONS and kept == [s.version for s in sets[-KEEP_VERSIONS:]]
    assert read_current(root).manifest["n"] == KEEP_VERSIONS + 1
    # The versions before the current one are still complete and readable.
    for previous in sets[-KEEP_VERSIONS:-1]:
        again = shards.ShardSet(artifacts.verify(previous.path))
        assert again.read().equals(_frame(previous.manifest["n"] * 10, 2))


def test_empty_shard_set_keeps_its_schema_in_column_order(tmp_path):
    root = tmp_path / "root"
    schema = pl.Schema({"text": pl.String(), "id": pl.String(), "offset": pl.Int64()})
    with ShardWriter(root) as w:
        w.write(pl.DataFrame(schema=schema))
        s = w.commit()
    assert s.num_rows == 0 and s.files == []
    assert s.read().schema == schema and read_current(root).read().schema == schema


def test_read_current_without_commit_is_a_clear_error(tmp_path):
    assert not has_current(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"nothing published under {tmp_path}"):
        read_current(tmp_path)

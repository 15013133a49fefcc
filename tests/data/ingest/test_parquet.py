"""Parquet sources: row batches across row groups, provenance by row index."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.data.ingest import ParquetSource, SourceReadError, document_id, read_batches


def _write(path, n=1000, row_group_size=100, **columns):
    table = pa.table(
        columns or {"id": [f"r{i}" for i in range(n)], "text": [f"row {i}" for i in range(n)]}
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return table


def test_parquet_many_row_groups_small_batches(tmp_path, ingest):
    _write(tmp_path / "d.parquet")
    assert pq.ParquetFile(tmp_path / "d.parquet").metadata.num_row_groups == 10
    spec = ParquetSource(name="pq", path="d.parquet")

    sizes = [len(b) for b in read_batches(spec, base_dir=tmp_path, batch_rows=64)]
    assert max(sizes) == 64 and sum(sizes) == 1000

    result = ingest(spec, batch_rows=64, shard_rows=300)
    df = result.shardset.read()
    assert df["text"].to_list() == [f"row {i}" for i in range(1000)]
    assert df["offset"].to_list() == list(range(1000))  # row index within the file
    assert df["source_id"][5] == "r5" and df["id"][5] == document_id("pq", "id:r5")
    assert len(result.shardset.files) == 4 and result.documents == 1000
    assert result.bytes_read == (tmp_path / "d.parquet").stat().st_size


def test_parquet_glob_positional_ids_and_other_columns(tmp_path, ingest):
    _write(tmp_path / "a.parquet", body=["x", "y"], n_tokens=[1, 2])
    _write(tmp_path / "b.parquet", body=["z"], n_tokens=[3])
    result = ingest(ParquetSource(name="pq", path="*.parquet", text_field="body"))
    df = result.shardset.read()
    assert df["text"].to_list() == ["x", "y", "z"]
    assert df["offset"].to_list() == [0, 1, 0]
    # No id column in the files: keyed by file and row, with a null source_id.
    assert df["source_id"].to_list() == [None] * 3
    assert df["id"][2] == document_id("pq", "at:b.parquet:0")


def test_parquet_integer_and_large_string_columns(tmp_path, ingest):
    table = pa.table(
        {"doc_id": pa.array([10, 11], pa.int64()), "text": pa.array(["a", "b"], pa.large_string())}
    )
    pq.write_table(table, tmp_path / "d.parquet")
    df = ingest(ParquetSource(name="pq", path="d.parquet", id_field="doc_id")).shardset.read()
    assert df["source_id"].to_list() == ["10", "11"]


def test_parquet_missing_text_column_is_a_config_error(tmp_path, ingest):
    _write(tmp_path / "d.parquet", content=["a"])
    with pytest.raises(SourceReadError, match="no column 'text'.*content"):
        ingest(ParquetSource(name="pq", path="d.parquet"))
    assert not (tmp_path / "out" / "pq" / "CURRENT").exists()


def test_not_a_parquet_file(tmp_path, ingest):
    (tmp_path / "d.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(SourceReadError, match="not readable Parquet"):
        ingest(ParquetSource(name="pq", path="d.parquet"))

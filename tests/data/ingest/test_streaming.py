"""Bounded memory: readers yield small batches and never hold a whole input; config errors."""

from __future__ import annotations

import gzip
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from flywheel.data.ingest import JsonlSource, ParquetSource, read_batches
from flywheel.data.ingest.readers import batched


def test_batched_never_exceeds_n():
    assert [len(b) for b in batched(iter(range(10)), 4)] == [4, 4, 2]
    assert list(batched(iter([]), 3)) == []
    with pytest.raises(ValueError):
        list(batched([1], 0))


@pytest.mark.parametrize("suffix", ["", ".gz", ".zst"])
def test_jsonl_reader_memory_is_bounded_by_the_batch(tmp_path, suffix):
    line = b'{"id": %d, "text": "' + b"lorem ipsum " * 40 + b'"}\n'
    data = b"".join(line % i for i in range(20_000))  # ~10 MB
    path = tmp_path / f"big.jsonl{suffix}"
    compress = {"": bytes, ".gz": gzip.compress, ".zst": zstandard.ZstdCompressor().compress}
    path.write_bytes(compress[suffix](data))
    del data
    spec = JsonlSource(name="big", path=path.name)

    tracemalloc.start()
    try:
        sizes = []
        for batch in read_batches(spec, base_dir=tmp_path, batch_rows=100):
            sizes.append(len(batch))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert max(sizes) == 100 and sum(sizes) == 20_000
    # The whole input is ~10 MB; a batch of 100 records plus read buffers is far less.
    assert peak < 4_000_000, peak


def test_parquet_reader_memory_is_bounded_by_row_groups(tmp_path):
    n = 20_000
    texts = [f"row {i} " + "x" * 1000 for i in range(n)]  # ~20 MB of text
    pq.write_table(pa.table({"text": texts}), tmp_path / "big.parquet", row_group_size=2000)
    del texts
    base = pa.total_allocated_bytes()
    peak, sizes = 0, []
    spec = ParquetSource(name="big", path="big.parquet")
    for batch in read_batches(spec, base_dir=tmp_path, batch_rows=500):
        peak = max(peak, pa.total_allocated_bytes() - base)
        sizes.append(len(batch))
    assert max(sizes) == 500 and sum(sizes) == n
    assert peak < 10_000_000, peak  # arrow holds about one row group, not the file


def test_missing_input_is_a_clear_error_before_anything_is_written(tmp_path, ingest):
    with pytest.raises(FileNotFoundError, match=r"source 'web'.*'data/\*\.jsonl'"):
        ingest(JsonlSource(name="web", path="data/*.jsonl"))
    with pytest.raises(FileNotFoundError, match=r"source 'pq'.*'missing\.parquet'"):
        ingest(ParquetSource(name="pq", path="missing.parquet"))
    (tmp_path / "adir").mkdir()
    with pytest.raises(FileNotFoundError, match="is a directory"):
        ingest(JsonlSource(name="web", path="adir"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.parquet"))


def test_truncated_gzip_fails_the_run_and_keeps_nothing(tmp_path, ingest):
    data = gzip.compress(b'{"text": "a"}\n' * 1000)
    (tmp_path / "t.jsonl.gz").write_bytes(data[: len(data) // 2])
    from flywheel.data.ingest import SourceReadError

    with pytest.raises(SourceReadError, match="t.jsonl.gz"):
        ingest(JsonlSource(name="t", path="t.jsonl.gz"))
    root = tmp_path / "out" / "t"
    assert not (root / "CURRENT").exists() and not list(root.glob(".staging-*"))


@pytest.mark.parametrize("arg", ["batch_rows", "shard_rows", "max_doc_bytes"])
def test_limits_must_be_positive(tmp_path, ingest, arg):
    (tmp_path / "x.jsonl").write_text('{"text": "a"}\n')
    with pytest.raises(ValueError, match=arg):
        ingest(JsonlSource(name="x", path="x.jsonl"), **{arg: 0})


def test_source_files_lists_what_a_source_reads(tmp_path):
    from flywheel.data.ingest import PythonEnvSource, TextFilesSource, source_files

    (tmp_path / "d").mkdir()
    for name in ("b.jsonl", "a.jsonl", "c.txt"):
        (tmp_path / "d" / name).write_text("x\n")
    jsonl = JsonlSource(name="j", path="d/*.jsonl")
    assert [p.name for p in source_files(jsonl, tmp_path)] == ["a.jsonl", "b.jsonl"]
    text = TextFilesSource(name="t", path="d")
    assert [p.name for p in source_files(text, tmp_path)] == ["c.txt"]
    assert source_files(PythonEnvSource(), tmp_path) == []
    with pytest.raises(FileNotFoundError):
        source_files(JsonlSource(name="j", path="nope/*.jsonl"), tmp_path)

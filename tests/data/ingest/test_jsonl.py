"""JSONL sources: plain, gzip and zstd, provenance and stable ids."""

from __future__ import annotations

import gzip
import hashlib

import polars as pl
import pytest
import zstandard

from flywheel.data.documents import DOCUMENT_SCHEMA
from flywheel.data.ingest import JsonlSource, document_id

from .conftest import write_jsonl

RECORDS = [
    {"id": "a1", "text": "first document"},
    {"id": 2, "text": "second \u00e9\u4e2d\U0001f600", "extra": [1, 2]},
    {"text": "no id: keyed by position"},
    {"id": None, "text": "null id: keyed by position"},
]


def _compress(data: bytes, suffix: str) -> bytes:
    if suffix == ".gz":
        return gzip.compress(data)
    if suffix == ".zst":
        return zstandard.ZstdCompressor().compress(data)
    return data


@pytest.mark.parametrize("suffix", ["", ".gz", ".zst"])
def test_jsonl_plain_and_compressed(tmp_path, ingest, suffix):
    plain = tmp_path / "plain.jsonl"
    offsets = write_jsonl(plain, RECORDS)
    target = tmp_path / f"data.jsonl{suffix}"
    target.write_bytes(_compress(plain.read_bytes(), suffix))
    result = ingest(JsonlSource(name="web", path=target.name))

    df = result.shardset.read()
    assert df.schema == pl.Schema(DOCUMENT_SCHEMA)
    assert df["text"].to_list() == [r["text"] for r in RECORDS]
    assert df["source_id"].to_list() == ["a1", "2", None, None]
    # Offsets are of the uncompressed stream, whatever the compression.
    assert df["offset"].to_list() == offsets
    assert set(df["path"]) == {str(target)} and set(df["source"]) == {"web"}
    assert df["id"].to_list()[:2] == [document_id("web", "id:a1"), document_id("web", "id:2")]
    assert df["id"][2] == document_id("web", f"at:{target.name}:{offsets[2]}")
    assert result.documents == 4 and result.quarantined == 0
    assert result.bytes_read == target.stat().st_size
    manifest = result.shardset.manifest
    assert (manifest["source"], manifest["kind"], manifest["documents"]) == ("web", "jsonl", 4)
    assert result.shardset.aux("quarantine").height == 0


def test_document_id_formula():
    digest = hashlib.sha1(b"web\x00id:a1").hexdigest()[:16]
    assert document_id("web", "id:a1") == f"web-{digest}"


def test_ids_are_stable_across_runs_and_depend_on_source_name(tmp_path, ingest):
    write_jsonl(tmp_path / "d.jsonl", RECORDS)
    first = ingest(JsonlSource(name="web", path="d.jsonl")).shardset.read()
    second = ingest(JsonlSource(name="web", path="d.jsonl")).shardset.read()  # a new version
    other_root = ingest(JsonlSource(name="web", path="d.jsonl"), root=tmp_path / "elsewhere")
    assert first.equals(second) and first.equals(other_root.shardset.read())
    renamed = ingest(JsonlSource(name="web2", path="d.jsonl")).shardset.read()
    assert not set(first["id"]) & set(renamed["id"])
    assert first["id"].n_unique() == len(RECORDS)


def test_multi_frame_zstd_and_multi_member_gzip(tmp_path, ingest):
    a, b = b'{"text": "one"}\n', b'{"text": "two"}\n'
    cctx = zstandard.ZstdCompressor()
    (tmp_path / "x.jsonl.zst").write_bytes(cctx.compress(a) + cctx.compress(b))
    (tmp_path / "x.jsonl.gz").write_bytes(gzip.compress(a) + gzip.compress(b))
    for name in ("x.jsonl.zst", "x.jsonl.gz"):
        df = ingest(JsonlSource(name="x", path=name)).shardset.read()
        assert df["text"].to_list() == ["one", "two"] and df["offset"].to_list() == [0, len(a)]


def test_glob_reads_matching_files_in_sorted_order(tmp_path, ingest):
    (tmp_path / "parts").mkdir()
    write_jsonl(tmp_path / "parts" / "b.jsonl", [{"text": "b"}])
    (tmp_path / "parts" / "a.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n'))
    write_jsonl(tmp_path / "parts" / "c.txt", [{"text": "not matched"}])
    result = ingest(JsonlSource(name="x", path="parts/*.jsonl*"), shard_rows=1)
    assert result.shardset.read()["text"].to_list() == ["a", "b"]
    assert len(result.shardset.files) == 2 and result.files == 2


def test_blank_lines_bom_crlf_and_no_final_newline(tmp_path, ingest):
    data = b'\xef\xbb\xbf{"text": "bom"}\r\n\n   \n{"text": "crlf"}\r\n{"text": "last"}'
    (tmp_path / "x.jsonl").write_bytes(data)
    result = ingest(JsonlSource(name="x", path="x.jsonl"))
    df = result.shardset.read()
    assert df["text"].to_list() == ["bom", "crlf", "last"]
    assert df["offset"].to_list() == [
        0,
        data.index(b'{"text": "crlf"'),
        data.index(b'{"text": "last"'),
    ]
    # Blank lines are not records, but are counted, not silently ignored.
    assert result.quarantined == 0 and result.skipped == {"blank_line": 2}
    assert result.shardset.manifest["skipped"] == {"blank_line": 2}


def test_custom_fields_and_no_id_field(tmp_path, ingest):
    write_jsonl(tmp_path / "x.jsonl", [{"key": 7, "body": "hello", "id": "ignored"}])
    df = ingest(JsonlSource(name="x", path="x.jsonl", text_field="body", id_field="key"))
    assert df.shardset.read()["source_id"].to_list() == ["7"]
    df = ingest(JsonlSource(name="y", path="x.jsonl", text_field="body", id_field=None))
    assert df.shardset.read()["source_id"].to_list() == [None]


def test_absolute_path_and_empty_file(tmp_path, ingest):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    result = ingest(JsonlSource(name="x", path=str(tmp_path / "empty.jsonl")))
    assert result.documents == 0 and result.shardset.num_rows == 0
    assert result.shardset.read().schema == pl.Schema(DOCUMENT_SCHEMA)

"""Bad records are quarantined with a reason, counted, and never take valid records with them."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.data.documents import QUARANTINE_SCHEMA
from flywheel.data.ingest import QUARANTINE_REASONS, JsonlSource, ParquetSource, TextFilesSource

from .conftest import write_jsonl

MAX_DOC_BYTES = 100
LINE_CAP = 4 * MAX_DOC_BYTES + 65_536  # readers.line_cap

# (reason, the bad line); a valid record is written before and after each one.
BAD_LINES = [
    ("invalid_utf8", b'{"text": "caf\xe9"}'),
    ("invalid_utf8", b'{"text": "lone \\ud800 surrogate"}'),
    ("invalid_json", b'{"text": "unterminated'),
    ("invalid_json", b"[" * 20_000),  # nested too deep for the parser
    ("not_an_object", b'["text", "in", "an", "array"]'),
    ("not_an_object", b'"just a string"'),
    ("missing_text", b'{"body": "wrong field"}'),
    ("missing_text", b'{"text": null}'),
    ("text_not_string", b'{"text": ["a", "list"]}'),
    ("text_not_string", b'{"text": 42}'),
    ("empty_text", b'{"text": ""}'),
    ("empty_text", b'{"text": " \\n\\t\\u3000 "}'),
    ("too_large", b'{"text": "' + b"x" * (MAX_DOC_BYTES + 1) + b'"}'),
    ("too_large", b'{"text": "\xc3\xa9' + b"x" * (MAX_DOC_BYTES - 1) + b'"}'),  # 101 bytes in UTF-8
    ("too_large", b'{"text": "' + b"y" * LINE_CAP + b'"}'),  # a line over the cap: never parsed
    ("bad_id", b'{"id": [1, 2], "text": "list id"}'),
    ("bad_id", b'{"id": {"a": 1}, "text": "object id"}'),
    ("bad_id", b'{"id": "  ", "text": "blank id"}'),
    ("duplicate_id", b'{"id": "dup", "text": "second with id dup"}'),
    ("duplicate_id", b'{"id": 7, "text": "7 and \\"7\\" are one id"}'),
]


def _crafted_lines() -> tuple[list[bytes], list[str]]:
    """Valid records interleaved with every bad line; returns (lines, valid texts)."""
    lines = [b'{"id": "dup", "text": "first with id dup"}', b'{"id": "7", "text": "id 7"}']
    valid = ["first with id dup", "id 7"]
    for i, (_, bad) in enumerate(BAD_LINES):
        lines += [b'{"text": "valid %d"}' % i, bad]
        valid.append(f"valid {i}")
    lines.append(b'{"id": "x" , "text": "exactly the cap: ' + b"z" * (MAX_DOC_BYTES - 18) + b'"}')
    valid.append("exactly the cap: " + "z" * (MAX_DOC_BYTES - 18))
    return lines, valid


def test_every_reason_is_quarantined_and_valid_records_survive(tmp_path, ingest):
    lines, valid = _crafted_lines()
    offsets = write_jsonl(tmp_path / "bad.jsonl", lines)
    result = ingest(JsonlSource(name="bad", path="bad.jsonl"), max_doc_bytes=MAX_DOC_BYTES)

    docs = result.shardset.read()
    assert docs["text"].to_list() == valid  # all of them, in order
    q = result.shardset.aux("quarantine")
    assert q.schema == pl.Schema(QUARANTINE_SCHEMA)
    assert q["reason"].to_list() == [reason for reason, _ in BAD_LINES]
    bad_offsets = [offsets[lines.index(bad)] for _, bad in BAD_LINES]
    assert q["offset"].to_list() == bad_offsets
    assert set(q["source"]) == {"bad"} and set(q["path"]) == {str(tmp_path / "bad.jsonl")}
    assert q["detail"].str.len_chars().min() > 0
    # Counts add up: every record read is a document or a quarantine row.
    assert result.documents + result.quarantined == len(lines) == result.records_read
    expected = {}
    for reason, _ in BAD_LINES:
        expected[reason] = expected.get(reason, 0) + 1
    assert result.quarantine_by_reason == expected
    assert result.shardset.manifest["quarantine_by_reason"] == expected
    assert set(expected) <= set(QUARANTINE_REASONS)


def test_raw_is_escaped_and_truncated(tmp_path, ingest):
    lines, _ = _crafted_lines()
    write_jsonl(tmp_path / "bad.jsonl", lines)
    q = ingest(JsonlSource(name="bad", path="bad.jsonl"), max_doc_bytes=MAX_DOC_BYTES)
    raw = q.shardset.aux("quarantine")["raw"].to_list()
    assert raw[0] == repr(b'{"text": "caf\xe9"}\n')
    assert all(len(eval(r)) <= 200 for r in raw)  # noqa: S307 - a repr of bytes, from this test
    assert eval(raw[14]) == (b'{"text": "' + b"y" * LINE_CAP)[:200]  # noqa: S307


def test_missing_id_with_require_id(tmp_path, ingest):
    write_jsonl(
        tmp_path / "x.jsonl", [{"id": 1, "text": "a"}, {"text": "b"}, {"id": None, "text": "c"}]
    )
    result = ingest(JsonlSource(name="x", path="x.jsonl", require_id=True))
    assert result.shardset.read()["text"].to_list() == ["a"]
    assert result.quarantine_by_reason == {"missing_id": 2}


def test_invalid_record_does_not_claim_its_id(tmp_path, ingest):
    write_jsonl(tmp_path / "x.jsonl", [{"id": 1, "text": ""}, {"id": 1, "text": "kept"}])
    result = ingest(JsonlSource(name="x", path="x.jsonl"))
    assert result.shardset.read()["text"].to_list() == ["kept"]
    assert result.quarantine_by_reason == {"empty_text": 1}


def test_mostly_bad_source_spills_quarantine_and_counts_add_up(tmp_path, ingest):
    write_jsonl(tmp_path / "x.jsonl", [{"body": f"wrong field {i}"} for i in range(5000)])
    result = ingest(JsonlSource(name="x", path="x.jsonl"), batch_rows=300)
    assert result.documents == 0 and result.quarantine_by_reason == {"missing_text": 5000}
    q = result.shardset.aux("quarantine")
    assert q.height == 5000 and q["offset"].is_sorted()
    # The spill file used while ingesting is not part of the committed version.
    assert sorted(p.name for p in result.shardset.path.iterdir()) == [
        "manifest.json", "quarantine.parquet"
    ]  # fmt: skip


def test_parquet_bad_rows(tmp_path, ingest):
    texts = ["ok 0", None, "ok 2", "", "ok 4", "z" * 101, "ok 6", "ok 7"]
    ids = ["a", "b", "c", "d", "e", "f", "a", None]
    pq.write_table(pa.table({"text": texts, "id": ids}), tmp_path / "t.parquet", row_group_size=3)
    binary = [b"ok bin", b"\xff\xfe", b"  "]
    pq.write_table(pa.table({"text": pa.array(binary, pa.binary())}), tmp_path / "u.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "v.parquet")
    result = ingest(ParquetSource(name="p", path="*.parquet"), max_doc_bytes=100, batch_rows=2)

    assert result.shardset.read()["text"].to_list() == ["ok 0", "ok 2", "ok 4", "ok 7", "ok bin"]
    q = result.shardset.aux("quarantine")
    assert list(
        zip(q["path"].str.split("/").list.last(), q["offset"], q["reason"], strict=True)
    ) == [
        ("t.parquet", 1, "missing_text"),
        ("t.parquet", 3, "empty_text"),
        ("t.parquet", 5, "too_large"),
        ("t.parquet", 6, "duplicate_id"),
        ("u.parquet", 1, "invalid_utf8"),
        ("u.parquet", 2, "empty_text"),
        ("v.parquet", 0, "text_not_string"),
        ("v.parquet", 1, "text_not_string"),
    ]
    assert eval(q["raw"][4]) == b"\xff\xfe"  # noqa: S307
    assert result.documents + result.quarantined == len(texts) + len(binary) + 2


def test_text_files_bad_files(tmp_path, ingest):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.txt").write_text("good a")
    (d / "b.txt").write_bytes(b"latin-1 caf\xe9")
    (d / "c.txt").write_text("   \n")
    (d / "d.txt").write_text("x" * 200)
    (d / "e.txt").write_bytes(b"\xef\xbb\xbfgood e")
    result = ingest(TextFilesSource(name="t", path="docs"), max_doc_bytes=100)
    assert result.shardset.read()["text"].to_list() == ["good a", "good e"]
    q = result.shardset.aux("quarantine")
    assert q["reason"].to_list() == ["invalid_utf8", "empty_text", "too_large"]
    assert eval(q["raw"][2]) == b"x" * 200  # noqa: S307


@pytest.mark.parametrize("reason", ["missing_id", "bad_id", "duplicate_id"])
def test_id_reasons_are_declared(reason):
    assert reason in QUARANTINE_REASONS

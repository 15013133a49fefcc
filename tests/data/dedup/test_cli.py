"""``flywheel dedup`` end to end through ``flywheel.cli.main``."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from polars.exceptions import ComputeError

from flywheel.cli import main
from flywheel.data.dedup import inputs

from .conftest import mutate


def records(docs: list[str], id_of) -> list[dict]:
    rows = [{"id": id_of(i), "text": t, "source": "topics"} for i, t in enumerate(docs[:20])]
    rows.append({"id": id_of(100), "text": docs[2].upper(), "source": "copy"})  # exact
    rows.append({"id": id_of(101), "text": mutate(docs[4], 2, 1), "source": "near"})  # near
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def test_int_ids_keep_their_type(docs: list[str], tmp_path: Path, capsys) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(docs, lambda i: i))
    assert main(["dedup", str(src), "--output", str(tmp_path / "out"), "--batch-size", "7"]) == 0
    kept = pl.read_parquet(tmp_path / "out" / "kept.parquet")
    dupes = pl.read_parquet(tmp_path / "out" / "duplicates.parquet")
    assert kept.columns == ["id", "text", "source"] and kept.schema["id"] == pl.Int64
    assert sorted(kept["id"]) == list(range(20))
    assert dupes.schema == {
        "id": pl.Int64,
        "duplicate_of": pl.Int64,
        "method": pl.String,
        "similarity": pl.Float64,
    }
    assert dupes.select("id", "duplicate_of", "method").rows() == [
        (100, 2, "exact"),
        (101, 4, "minhash"),
    ]
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "22 docs, 20 kept, 2 removed" in out[0]


def test_string_ids_from_parquet_and_an_index(docs: list[str], tmp_path: Path) -> None:
    src = tmp_path / "in.parquet"
    pl.DataFrame(records(docs, lambda i: f"d-{i}")).write_parquet(src)
    args = ["dedup", str(src), "--output", str(tmp_path / "out"), "--index", str(tmp_path / "ix")]
    assert main(args) == 0
    first = pl.read_parquet(tmp_path / "out" / "duplicates.parquet")
    assert first.schema["id"] == pl.String and set(first["id"]) == {"d-100", "d-101"}
    assert main(args) == 0  # again, against the index: same decisions, nothing new
    again = pl.read_parquet(tmp_path / "out" / "duplicates.parquet")
    assert again.equals(first)
    assert pl.read_parquet(tmp_path / "out" / "kept.parquet").height == 20


def test_jsonl_gz_input(docs: list[str], tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl.gz", records(docs, lambda i: f"g{i}"))
    assert main(["dedup", str(src), "-o", str(tmp_path / "out"), "--threshold", "0.9"]) == 0
    assert pl.read_parquet(tmp_path / "out" / "kept.parquet").height == 20


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": 1, "text": "a b c"}\n{"id": 2, "body": "x"}\n', "line 2: record has no 'text'"),
        ('{"text": "a b c"}\n', "record has no 'id'"),
        ('{"id": 1, "text": "fine"}\n{not json\n', "line 2: invalid JSON"),
    ],
)
def test_strict_bad_record_exits_2_with_one_line(tmp_path: Path, capsys, content, message) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(content)
    assert main(["dedup", str(src), "--output", str(tmp_path / "out"), "--strict"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(src) in err
    assert not (tmp_path / "out" / "kept.parquet").exists()


def test_missing_inputs_and_columns_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["dedup", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o")]) == 2
    assert "input file not found" in capsys.readouterr().err
    src = tmp_path / "no_text.parquet"
    pl.DataFrame({"id": [1], "body": ["x"]}).write_parquet(src)
    assert main(["dedup", str(src), "--output", str(tmp_path / "o")]) == 2
    assert "no 'text' column" in capsys.readouterr().err
    ok = write_jsonl(tmp_path / "ok.jsonl", [{"id": 1, "text": "a"}])
    assert main(["dedup", str(ok), "--output", str(tmp_path / "o"), "--threshold", "2"]) == 2
    assert "threshold" in capsys.readouterr().err


# --- bad records are rejected, not fatal ------------------------------------------------------

# (line, reason) of every bad line; each is a record the run must list in rejected.parquet.
BAD_LINES = [
    (b'{"id": 500, "text": "cut off', "invalid_json"),
    (b'{"id": 501, "text": "caf\xe9 latin-1"}', "invalid_utf8"),
    (b'{"text": "a record without an id"}', "missing_id"),
    (b'{"id": 503, "body": "no text field"}', "missing_text"),
    (b'{"id": 504, "text": 42}', "text_not_string"),
    (b'{"id": 505, "text": null}', "missing_text"),
    (b"[505.5, 2]", "not_an_object"),
    (b'{"id": "", "text": "an empty id"}', "bad_id"),
    (b'{"id": 508, "text": "fine text", "meta": [1, "a"]}', "unsupported_value"),
    (b'{"id": 509, "text": "fine text", "note": "\\ud800"}', "invalid_utf8"),
    (b'{"id": 510, "text": "\\udc00 a lone surrogate"}', "invalid_utf8"),
]
BLANK_LINES = [b"", b"  \t"]


def mixed_jsonl(path: Path, valid: list[dict]) -> tuple[Path, dict[int, str]]:
    """Valid records with the bad and blank lines spread between them; ``{line: reason}``."""
    extra = [(b, None) for b in BLANK_LINES[:1]] + BAD_LINES + [(b, None) for b in BLANK_LINES[1:]]
    lines: list[bytes] = []
    expected: dict[int, str] = {}
    for row in valid:
        lines.append(json.dumps(row).encode())
        if extra:
            line, reason = extra.pop(0)
            lines.append(line)
            if reason is not None:
                expected[len(lines)] = reason
    assert not extra  # every bad line went in
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, expected


def test_every_record_is_kept_duplicate_or_rejected(docs: list[str], tmp_path: Path, capsys):
    valid = records(docs, lambda i: i)
    src, expected = mixed_jsonl(tmp_path / "crawl.jsonl", valid)
    out = tmp_path / "out"
    assert main(["dedup", str(src), "--output", str(out), "--batch-size", "5"]) == 0
    kept = pl.read_parquet(out / "kept.parquet")
    dupes = pl.read_parquet(out / "duplicates.parquet")
    rejected = pl.read_parquet(out / "rejected.parquet")
    assert kept.height + dupes.height == len(valid)
    assert sorted(kept["id"]) == list(range(20)) and sorted(dupes["id"]) == [100, 101]
    assert rejected.height == len(BAD_LINES)
    assert dict(zip(rejected["line"], rejected["reason"], strict=True)) == expected
    assert set(rejected["path"]) == {str(src)} and rejected["row"].null_count() == len(BAD_LINES)
    assert all(r.startswith("b'") and len(r) < 1000 for r in rejected["raw"])  # escaped excerpt
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["docs"], summary["kept"], summary["removed"]) == (22, 20, 2)
    assert summary["rejected"] == len(BAD_LINES) and summary["blank_lines"] == len(BLANK_LINES)
    assert summary["rejected_by_reason"] == dict(sorted(Counter(expected.values()).items()))
    out_line = capsys.readouterr().out.strip()
    counts = f"22 docs, 20 kept, 2 removed (1 exact, 1 minhash), {len(BAD_LINES)} rejected"
    assert counts in out_line and "2 blank lines" in out_line
    assert not list(out.glob(".*"))  # no staging or temporary files left


def test_strict_stops_at_the_first_bad_line(docs: list[str], tmp_path: Path, capsys) -> None:
    src, expected = mixed_jsonl(tmp_path / "crawl.jsonl", records(docs, lambda i: i))
    out = tmp_path / "out"
    assert main(["dedup", str(src), "--output", str(out), "--strict"]) == 2
    first = min(expected)
    err = capsys.readouterr().err
    assert err.startswith(f"flywheel dedup: error: {src}, line {first}: invalid JSON (")
    assert err.rstrip().endswith("[invalid_json]") and err.count("\n") == 1
    assert list(out.iterdir()) == []


def test_parquet_rows_are_rejected_by_index(tmp_path: Path) -> None:
    src = tmp_path / "in.parquet"
    ids = ["a", None, "", "d", " \x1f ", "f"]
    texts = ["first text", "no id", "empty id", None, "blank id", "sixth text"]
    pq.write_table(pa.table({"id": ids, "text": texts}), src)
    out = tmp_path / "out"
    assert main(["dedup", str(src), "--output", str(out), "--batch-size", "4"]) == 0
    rejected = pl.read_parquet(out / "rejected.parquet")
    assert rejected.select("row", "reason").rows() == [
        (1, "missing_id"),
        (2, "bad_id"),
        (3, "missing_text"),
        (4, "bad_id"),
    ]
    assert rejected["line"].null_count() == 4
    assert sorted(pl.read_parquet(out / "kept.parquet")["id"]) == ["a", "f"]

    binary = tmp_path / "binary.parquet"
    table = pa.table({"id": [1.0, float("nan"), 3.0], "text": [b"ok", b"ok", b"\xff"]})
    pq.write_table(table, binary)
    assert main(["dedup", str(binary), "--output", str(out)]) == 0
    rejected = pl.read_parquet(out / "rejected.parquet")
    assert rejected.select("row", "reason").rows() == [(1, "bad_id"), (2, "invalid_utf8")]


def test_whole_file_problems_exit_2(tmp_path: Path, capsys) -> None:
    ints = tmp_path / "ints.parquet"
    pl.DataFrame({"id": [1], "text": [7]}).write_parquet(ints)
    assert main(["dedup", str(ints), "--output", str(tmp_path / "o")]) == 2
    assert "column 'text' holds int64, not strings" in capsys.readouterr().err
    truncated = tmp_path / "cut.jsonl.gz"
    data = gzip.compress(b"".join(b'{"id": %d, "text": "t"}\n' % i for i in range(500)))
    truncated.write_bytes(data[: len(data) // 2])
    assert main(["dedup", str(truncated), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"cannot read {truncated} after line" in err and err.count("\n") == 1


def test_short_docs_alone_in_a_batch(tmp_path: Path) -> None:
    # regression: a batch with fewer words than the shingle size crashed MinHash
    src = write_jsonl(tmp_path / "short.jsonl", [{"id": 1, "text": "a b c"}, {"id": 2, "text": ""}])
    assert main(["dedup", str(src), "--output", str(tmp_path / "o"), "--batch-size", "1"]) == 0
    assert pl.read_parquet(tmp_path / "o" / "kept.parquet").height == 2


# --- I/O failures: one line naming the path, exit 1 -------------------------------------------


def test_output_under_a_regular_file(tmp_path: Path, capsys) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "a b c"}])
    (tmp_path / "some_file").write_text("")
    out = tmp_path / "some_file" / "out"
    assert main(["dedup", str(src), "--output", str(out)]) == 1
    assert capsys.readouterr().err == f"flywheel dedup: cannot write {out}: Not a directory\n"


def _disk_full(error: Exception):
    """A writer that leaves a partial file, as a full disk does, then raises ``error``."""

    def write(self, target, *args, **kwargs) -> None:
        Path(target).write_bytes(b"PAR1 partial")
        raise error

    return write


@pytest.mark.parametrize(
    ("cls", "method", "error"),
    [
        (pl.DataFrame, "write_parquet", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))),
        (pl.LazyFrame, "sink_parquet", ComputeError("sink: No space left on device (os error 28)")),
    ],
)
def test_full_disk_is_one_line_and_leaves_no_file(
    docs: list[str], tmp_path: Path, capsys, monkeypatch, cls, method, error
) -> None:
    out = tmp_path / "out"
    args = ["dedup", str(write_jsonl(tmp_path / "in.jsonl", records(docs, str))), "-o", str(out)]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    monkeypatch.setattr(cls, method, _disk_full(error))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err == f"flywheel dedup: cannot write {out / 'kept.parquet'}: No space left on device\n"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the last run's, intact


def test_read_error_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    class FailingStream(io.BytesIO):
        def readline(self, *args) -> bytes:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    src = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "a b c"}])
    monkeypatch.setattr(inputs, "open_jsonl", lambda path: (io.BytesIO(), FailingStream()))
    assert main(["dedup", str(src), "--output", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err == f"flywheel dedup: cannot read {src}: Input/output error\n"


def test_index_partitions_are_set_once_and_compaction_is_a_verb(
    docs: list[str], tmp_path: Path, capsys
) -> None:
    from flywheel.data.dedup import store

    corpus = write_jsonl(tmp_path / "c.jsonl", records(docs[:10], lambda i: f"d{i}"))
    index, out = tmp_path / "ix", tmp_path / "out"
    args = ["dedup", str(corpus), "--index", str(index), "--index-partitions", "4"]
    assert main([*args, "--output", str(out)]) == 0
    assert store.read_manifest(index)["partitions"] == 4
    assert main(["dedup", str(corpus), "--output", str(out / "again"), "--index", str(index)]) == 2
    assert "partitioned 4 ways and the settings ask for 32" in capsys.readouterr().err
    assert main(["dedup-compact", str(tmp_path / "none")]) == 2
    assert "no dedup index at" in capsys.readouterr().err

"""``flywheel dedup`` end to end through ``flywheel.cli.main``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from flywheel.cli import main

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
def test_bad_records_exit_2_with_one_line(tmp_path: Path, capsys, content, message) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(content)
    assert main(["dedup", str(src), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
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

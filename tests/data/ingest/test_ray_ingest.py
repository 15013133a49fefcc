"""Ingest on Ray (``engine: ray``) commits what the local engine commits: the same documents
and ids, the same quarantine rows with the same reasons, the same counts, from sources full
of bad records spread over several files (a repeated id across files included).

    .venv/bin/python -m pytest -q tests/data/ingest/test_ray_ingest.py
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.core.settings.engine import RaySettings
from flywheel.data.ingest import (
    JsonlSource,
    ParquetSource,
    SourceReadError,
    SourceSpec,
    TextFilesSource,
    ingest_source,
)

from .conftest import write_jsonl
from .test_quarantine import MAX_DOC_BYTES, _crafted_lines

ray = pytest.importorskip("ray")

COUNTS = ("documents", "quarantined", "quarantine_by_reason", "records_read", "skipped")
READ = ("files_read", "bytes_read", "text_bytes")


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 << 20)
    yield RaySettings()  # connect() finds this process connected
    ray.shutdown()


def _jsonl(base: Path) -> SourceSpec:
    lines, _ = _crafted_lines()  # every quarantine reason, between valid records
    write_jsonl(base / "a.jsonl", lines)
    # b: blank lines (skipped, not records), an id kept in a.jsonl (a repeat across files),
    # and an id first kept here whose later repeat is in the same file
    write_jsonl(
        base / "b.jsonl",
        [{"id": "dup", "text": "repeat of a.jsonl's id"}, b"", {"id": "b1", "text": "b one"}]
        + [b"   ", {"id": "b1", "text": "b one again"}, {"text": "no id in b"}],
    )
    c = [b'{"id": "b1", "text": "in c"}', b'{"id": "c1", "text": "c one"}', b"{oops"]
    (base / "c.jsonl.gz").write_bytes(gzip.compress(b"\n".join(c) + b"\n"))
    return JsonlSource(name="js", path="*.jsonl*", id_field="id")


def _parquet(base: Path) -> SourceSpec:
    texts = ["ok 0", None, "ok 2", "", "ok 4", "z" * 101, "ok 6", "ok 7"]
    ids = ["a", "b", "c", "d", "e", "f", "a", None]
    pq.write_table(pa.table({"text": texts, "id": ids}), base / "t.parquet", row_group_size=3)
    binary = [b"ok bin", b"\xff\xfe", b"  "]
    pq.write_table(
        pa.table({"text": pa.array(binary, pa.binary()), "id": ["e", "g", "h"]}), base / "u.parquet"
    )
    return ParquetSource(name="pq", path="*.parquet")


def _text_files(base: Path) -> SourceSpec:
    d = base / "docs"
    d.mkdir()
    for name, data in {
        "a.txt": b"good a", "b.txt": b"latin-1 caf\xe9", "c.txt": b"   \n",
        "d.txt": b"x" * 200, "e.txt": b"\xef\xbb\xbfgood e", "sub/f.txt": b"good f",
    }.items():  # fmt: skip
        (d / name).parent.mkdir(exist_ok=True)
        (d / name).write_bytes(data)
    return TextFilesSource(name="tx", path="docs", glob="**/*.txt")


@pytest.mark.parametrize("make_source", [_jsonl, _parquet, _text_files])
def test_ray_ingest_commits_what_local_ingest_does(tmp_path: Path, cluster, make_source) -> None:
    source = make_source(tmp_path)
    options = {"base_dir": tmp_path, "max_doc_bytes": MAX_DOC_BYTES, "batch_rows": 3}
    local = ingest_source(source, tmp_path / "local", **options, shard_rows=4)
    on_ray = ingest_source(source, tmp_path / "ray", **options, shard_rows=4, ray=cluster)

    assert local.shardset.manifest["engine"] == "local"
    assert on_ray.shardset.manifest["engine"] == "ray"
    mine, theirs = on_ray.shardset, local.shardset
    assert mine.read().equals(theirs.read())  # the same documents and ids, in the same order
    assert mine.manifest["shards"] == theirs.manifest["shards"]  # same shard boundaries
    assert mine.aux("quarantine").equals(theirs.aux("quarantine"))
    for key in COUNTS + READ:
        assert mine.manifest[key] == theirs.manifest[key], key
    assert local.quarantined > 0 and local.documents > 0
    if source.kind == "jsonl":  # repeats within a file and across files are found
        q = mine.aux("quarantine")
        repeats = q.filter(q["reason"] == "duplicate_id")["path"].str.split("/").list.last()
        assert repeats.to_list() == ["a.jsonl", "a.jsonl", "b.jsonl", "b.jsonl", "c.jsonl.gz"]
        assert mine.manifest["skipped"] == {"blank_line": 2}


def test_an_unreadable_file_stops_the_ray_ingest(tmp_path: Path, cluster) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"text": "fine"}])
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b'{"text": "cut"}\n' * 50)[:-20])
    source = JsonlSource(name="cut", path="*.jsonl*")
    with pytest.raises(SourceReadError, match="b.jsonl.gz"):
        ingest_source(source, tmp_path / "out", base_dir=tmp_path, ray=cluster)
    assert not (tmp_path / "out" / "CURRENT").exists()  # nothing was published


def test_a_local_ingest_never_imports_ray(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"text": "one"}, b"{bad"])
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from flywheel.data.ingest import JsonlSource, ingest_source
        base = Path({str(tmp_path)!r})
        r = ingest_source(JsonlSource(name="a", path="a.jsonl"), base / "out", base_dir=base)
        assert (r.documents, r.quarantined) == (1, 1)
        assert "ray" not in sys.modules, sorted(m for m in sys.modules if m.startswith("ray"))
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)

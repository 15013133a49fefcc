"""``flywheel dedup-repartition``: an index rewritten N ways holds the lookup rows a fresh
N-way index would, answers every batch as before on both engines, and survives a crash at
any point of the rewrite.

    .venv/bin/python -m pytest -q tests/data/dedup/test_repartition.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from flywheel.cli import main
from flywheel.data.dedup import DedupIndex, DedupSettings, partitions, repartition, store

from .conftest import planted_corpus

CUTS = (61, 63, 66)  # as test_ray_index: exact copies, chain links and blanks span batches


def build(path: Path, corpus, count: int) -> None:
    """The corpus in 4 committed batches, into a ``count``-way index (local engine)."""
    ids, texts = corpus
    bounds = [0, *CUTS, len(ids)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        index = DedupIndex.open(path, DedupSettings(index_partitions=count))
        index.add(ids[a:b], texts[a:b])
        index.commit()


def lookups(path: Path) -> dict[tuple[str, int], pl.DataFrame]:
    """Every non-empty partition's rows, as a read of it returns them (in that order)."""
    manifest = store.read_manifest(path)
    out = {}
    for family in partitions.FAMILIES:
        for p in range(manifest["partitions"]):
            rows = partitions.read(path, manifest["parts"], family, p)
            if rows.height:
                out[family, p] = rows
    return out


def same_lookups(a: Path, b: Path) -> bool:
    la, lb = lookups(a), lookups(b)
    return la.keys() == lb.keys() and all(la[k].equals(lb[k]) for k in la)


def files_are_the_named_ones(path: Path) -> None:
    parts = store.read_manifest(path)["parts"]
    named = {
        partitions.entry_file(path, e, f, p)
        for e in parts
        for f in partitions.FAMILIES
        for p in e[f]
    }
    assert set(path.glob("*=*/*.parquet")) == named


@pytest.fixture(scope="module")
def corpus():
    ids, texts = planted_corpus(variants=40, seed=9)
    return (ids[:-15], texts[:-15]), (ids[-15:], texts[-15:])


def test_repartitioned_lookups_equal_a_fresh_index_of_that_count(corpus, tmp_path: Path) -> None:
    built, _ = corpus
    build(tmp_path / "ix", built, 32)
    for count in (8, 64):  # 32 -> 8 -> 64, each against a fresh build of that count
        assert main(["dedup-repartition", str(tmp_path / "ix"), "--partitions", str(count)]) == 0
        build(tmp_path / f"fresh{count}", built, count)
        assert store.read_manifest(tmp_path / "ix")["partitions"] == count
        assert same_lookups(tmp_path / "ix", tmp_path / f"fresh{count}")
        files_are_the_named_ones(tmp_path / "ix")
        assert all(int(d.name.split("=")[1]) < count for d in (tmp_path / "ix").glob("*=*"))
    assert partitions.partition_files(store.read_manifest(tmp_path / "ix")["parts"]) == {
        "band": 1, "exact": 1, "ids": 1
    }  # fmt: skip


def test_answers_are_unchanged_on_both_engines(corpus, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from flywheel.data.dedup.ray_index import RayDedupIndex

    built, probe = corpus
    ix = tmp_path / "ix"
    build(ix, built, 32)

    def answers(count: int) -> list:
        got = []
        for engine in (DedupIndex, RayDedupIndex):
            shutil.copytree(ix, tmp_path / "probe")  # add() on Ray writes a (pending) part
            result = engine.open(tmp_path / "probe", DedupSettings(index_partitions=count))
            result = result.add(*probe)
            got.append((result.keep.tolist(), result.duplicates.to_dicts()))
            shutil.rmtree(tmp_path / "probe")
        return got

    ray.init(address="local", num_cpus=1, include_dashboard=False, object_store_memory=80 << 20)
    try:
        before = answers(32)
        assert repartition.repartition_index(ix, 8)["after"] == 8
        at8 = answers(8)
        repartition.repartition_index(ix, 64)
        at64 = answers(64)
    finally:
        ray.shutdown()
    assert sum(not k for k in before[0][0]) > 3  # the probe meets the index
    assert before[0] == before[1] == at8[0] == at8[1] == at64[0] == at64[1]


def test_a_crash_mid_way_leaves_the_old_index_and_a_rerun_completes(
    corpus, tmp_path: Path, monkeypatch
) -> None:
    built, probe = corpus
    ix, fresh = tmp_path / "ix", tmp_path / "fresh8"
    build(ix, built, 32)
    build(fresh, built, 8)
    shutil.copytree(ix, tmp_path / "old")
    real_write, calls = partitions.atomic_write_parquet, []

    def dies_on_the_fifth(frame, path, *args, **kw):
        calls.append(path)
        if len(calls) == 5:
            raise OSError("disk gone")  # a crash after 4 new partition files were written
        return real_write(frame, path, *args, **kw)

    monkeypatch.setattr(partitions, "atomic_write_parquet", dies_on_the_fifth)
    with pytest.raises(OSError, match="disk gone"):
        repartition.repartition_index(ix, 8)
    monkeypatch.undo()
    assert len(list(ix.glob("*=*/merged-*.parquet"))) == 4  # written, named by no manifest
    assert store.read_manifest(ix) == store.read_manifest(tmp_path / "old")
    assert same_lookups(ix, tmp_path / "old")  # every read returns the old rows
    old = DedupIndex.open(tmp_path / "old").add(*probe)
    assert DedupIndex.open(ix).add(*probe).duplicates.equals(old.duplicates)

    # a crash after the new manifest, before the old files are deleted: the new index
    def dies(*args, **kw):
        raise OSError("killed")

    monkeypatch.setattr(repartition.partitions, "remove_orphans", dies)
    with pytest.raises(OSError, match="killed"):
        repartition.repartition_index(ix, 8)
    monkeypatch.undo()
    assert same_lookups(ix, fresh)
    with pytest.raises(ValueError, match="already partitioned 8 ways"):
        repartition.repartition_index(ix, 8)
    index = DedupIndex.open(ix, DedupSettings(index_partitions=8))
    assert index.add(*probe).duplicates.equals(old.duplicates)
    index.commit()  # the next commit deletes what the crash left
    files_are_the_named_ones(ix)

    # and from the first crash's state, a rerun completes
    repartition.repartition_index(tmp_path / "old", 8)
    assert same_lookups(tmp_path / "old", fresh)
    files_are_the_named_ones(tmp_path / "old")


def test_bad_counts_and_the_mismatch_error_name_the_problem(corpus, tmp_path: Path, capsys) -> None:
    built, _ = corpus
    ix = tmp_path / "ix"
    build(ix, (built[0][:70], built[1][:70]), 32)
    for bad, message in (("0", "in 1..65536, got 0"), ("-3", "got -3"), ("32", "already")):
        assert main(["dedup-repartition", str(ix), "--partitions", bad]) == 2
        assert message in capsys.readouterr().err
    assert main(["dedup-repartition", str(tmp_path / "none"), "--partitions", "8"]) == 2
    assert "no dedup index" in capsys.readouterr().err
    with pytest.raises(ValueError, match=f"flywheel dedup-repartition {ix} --partitions 8"):
        DedupIndex.open(ix, DedupSettings(index_partitions=8))

"""The persistent index on Ray decides as the local DedupIndex, batch after batch, and reads
only the band partitions a batch touches; either engine continues the other's index.

    .venv/bin/python -m pytest -q tests/data/dedup/test_ray_index.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from flywheel.cli import main
from flywheel.data.dedup import DedupIndex, DedupSettings, store
from flywheel.data.dedup.cli import DUPLICATES, KEPT

from .conftest import planted_corpus

ray = pytest.importorskip("ray")

# planted_corpus: 60 prose docs, then exact0, exact0b, chain_b | chain_c, chain_e, empty1 |
# blank2, doc3 (a repeated id), near7, variants: the cuts put an exact copy, a chain link and
# a blank after their originals' batch, so each resolves against the index
CUTS = (61, 63, 66)


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 << 20)
    yield
    ray.shutdown()


def batches(ids: list[str], texts: list[str]):
    bounds = [0, *CUTS, len(ids)]
    return [(ids[a:b], texts[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


def run(index_class, path: Path, corpus, settings: DedupSettings, **kw):
    """Each batch in a freshly opened index (so every batch reads the committed index)."""
    results = []
    for ids, texts in batches(*corpus):
        index = index_class.open(path, settings, **kw)
        results.append(index.add(ids, texts))
        index.commit()
    return results


@pytest.mark.parametrize(
    "settings",
    [DedupSettings(), DedupSettings(exact=False, verify="signature", threshold=0.7)],
    ids=["default", "no-exact-signature"],
)
def test_batches_on_ray_decide_as_the_local_index(cluster, tmp_path: Path, settings) -> None:
    from flywheel.data.dedup.ray_index import RayDedupIndex

    corpus = planted_corpus(variants=60, seed=3)
    local = run(DedupIndex, tmp_path / "local", corpus, settings)
    on_ray = run(RayDedupIndex, tmp_path / "ray", corpus, settings)
    for a, b in zip(local, on_ray, strict=True):
        assert b.keep.tolist() == a.keep.tolist()
        assert b.duplicates.to_dicts() == a.duplicates.to_dicts()
        assert {k: b.stats[k] for k in a.stats if k not in ("seconds", "signature_seconds")} == {
            k: v for k, v in a.stats.items() if k not in ("seconds", "signature_seconds")
        }
    last = on_ray[-1].duplicates
    assert (last["method"] == "minhash").sum() > 10  # later batches meet the index
    # the two indexes hold the same documents, decisions, signatures and sketches
    a, b = (
        DedupIndex.open(tmp_path / "local", settings),
        DedupIndex.open(tmp_path / "ray", settings),
    )
    assert a._ids == b._ids
    for name in ("root", "method", "similarity", "exact", "lsh", "sig", "sk_len"):
        assert np.array_equal(a._cols[name].values, b._cols[name].values), name
    assert np.array_equal(a._sketches.values, b._sketches.values)


def test_a_rerun_is_idempotent_and_either_engine_continues_the_other(
    cluster, tmp_path: Path
) -> None:
    from flywheel.data.dedup.ray_index import RayDedupIndex

    ids, texts = planted_corpus(variants=30, seed=4)
    s = DedupSettings()
    built = DedupIndex.open(tmp_path / "ix", s)
    whole = built.add(ids, texts)
    built.commit()
    again = RayDedupIndex.open(tmp_path / "ix", s).add(ids, ["changed"] * len(ids))
    assert again.stats["new_docs"] == 0
    assert again.keep.tolist() == whole.keep.tolist()
    assert again.duplicates.equals(whole.duplicates)
    # a new batch on Ray against the local engine's index, then back to the local engine
    extra_ids, extra = ["late0", "late1"], [texts[5].upper(), texts[ids.index("chain_c")]]
    ray_index = RayDedupIndex.open(tmp_path / "ix", s)
    late = ray_index.add(extra_ids, extra)
    ray_index.commit()
    expected = DedupIndex(s).add([*ids, *extra_ids], [*texts, *extra])
    assert late.duplicates.to_dicts() == expected.duplicates.tail(2).to_dicts()
    assert len(DedupIndex.open(tmp_path / "ix", s)) == len(set(ids)) + 2


def test_a_small_batch_reads_few_band_partitions(cluster, tmp_path: Path) -> None:
    from flywheel.data.dedup.ray_index import RayDedupIndex

    ids, texts = planted_corpus(variants=40, seed=5)
    index = RayDedupIndex.open(tmp_path / "ix")
    first = index.add(ids, texts)
    index.commit()
    assert first.stats["partitions_read"] == first.stats["partitions_total"] == 32
    small = RayDedupIndex.open(tmp_path / "ix").add(["new"], [texts[7] + " and one more line"])
    bands = small.stats["bands"]
    assert 0 < small.stats["partitions_read"] <= bands < small.stats["partitions_total"]
    assert small.duplicates.to_dicts()[0]["duplicate_of"] == "doc7"


def test_an_index_without_partitions_is_backfilled(cluster, tmp_path: Path) -> None:
    """An index written before lookup partitions existed: the Ray engine adds them."""
    from flywheel.data.dedup.ray_index import RayDedupIndex

    ids, texts = planted_corpus(variants=20, seed=6)
    old = DedupIndex.open(tmp_path / "ix")
    first = old.add(ids[:63], texts[:63])
    old.commit()
    manifest = store.read_manifest(tmp_path / "ix")
    parts = [{"file": e["file"], "rows": e["rows"]} for e in manifest["parts"]]
    store.write_manifest(tmp_path / "ix", {k: manifest[k] for k in store.FINGERPRINT_FIELDS}, parts)
    for f in (tmp_path / "ix").glob("*=*/*.parquet"):
        f.unlink()
    second = RayDedupIndex.open(tmp_path / "ix").add(ids[63:], texts[63:])
    whole = DedupIndex().add(ids, texts)
    assert np.concatenate([first.keep, second.keep]).tolist() == whole.keep.tolist()
    assert pl.concat([first.duplicates, second.duplicates]).equals(whole.duplicates)


def test_the_cli_with_an_index_on_ray(cluster, tmp_path: Path) -> None:
    ids, texts = planted_corpus(variants=30, seed=7)
    inputs = []
    for k, part in enumerate((slice(0, 63), slice(63, None))):
        inputs.append(tmp_path / f"in{k}.jsonl")
        rows = [{"id": i, "text": t} for i, t in zip(ids[part], texts[part], strict=True)]
        inputs[-1].write_text("".join(json.dumps(r) + "\n" for r in rows))
    outputs = {}
    for engine in ("local", "ray"):
        for k, src in enumerate([*inputs, inputs[-1]]):  # the last one twice: idempotent
            out = tmp_path / f"{engine}{k}"
            index = tmp_path / f"ix-{engine}"
            args = ["dedup", str(src), "-o", str(out), "--engine", engine, "--index", str(index)]
            assert main([*args, "--batch-size", "17"]) == 0
            outputs[engine, k] = [pl.read_parquet(out / f) for f in (KEPT, DUPLICATES)]
            summary = json.loads((out / "summary.json").read_text())
            outputs[engine, k].append(
                {k: v for k, v in summary.items() if k not in ("seconds", "engine")}
            )
    for k in range(len(inputs) + 1):
        assert outputs["ray", k][0].equals(outputs["local", k][0])
        assert outputs["ray", k][1].equals(outputs["local", k][1])
        assert outputs["ray", k][2] == outputs["local", k][2]
    assert outputs["ray", 1][1].height > 10  # the second input met the first in the index
    assert outputs["ray", 2][1].equals(outputs["ray", 1][1])


def test_the_index_partition_count_follows_the_settings(cluster, tmp_path: Path) -> None:
    from flywheel.data.dedup.ray_index import RayDedupIndex

    corpus = planted_corpus(variants=30, seed=8)
    s8 = DedupSettings(index_partitions=8)
    local = run(DedupIndex, tmp_path / "local", corpus, s8)
    on_ray = run(RayDedupIndex, tmp_path / "ray", corpus, s8)
    for a, b in zip(local, on_ray, strict=True):
        assert b.keep.tolist() == a.keep.tolist()
        assert b.duplicates.to_dicts() == a.duplicates.to_dicts()
    assert on_ray[0].stats["partitions_total"] == 8
    for name in ("local", "ray"):
        assert store.read_manifest(tmp_path / name)["partitions"] == 8
        dirs = {p.name for p in (tmp_path / name).glob("*=*")}
        assert dirs == {f"{f}={p}" for f in ("band", "exact", "ids") for p in range(8)}
    for index_class in (DedupIndex, RayDedupIndex):  # a continuation at another count
        with pytest.raises(ValueError, match="partitioned 8 ways and the settings ask for 32"):
            index_class.open(tmp_path / "ray", DedupSettings())


def test_compaction_merges_partition_files_and_answers_the_same(cluster, tmp_path: Path) -> None:
    import shutil

    from flywheel.data.dedup.partitions import FAMILIES, entry_file, partition_files
    from flywheel.data.dedup.ray_index import RayDedupIndex

    ids, texts = planted_corpus(variants=40, seed=9)
    built = (ids[:-15], texts[:-15])  # 4 batches, so 4 commits (CUTS)
    loose, auto, manual = tmp_path / "loose", tmp_path / "auto", tmp_path / "manual"
    run(RayDedupIndex, loose, built, DedupSettings(compact_files=1000))
    run(DedupIndex, auto, built, DedupSettings(compact_files=2))  # compacts as it commits
    shutil.copytree(loose, manual)
    assert main(["dedup-compact", str(manual)]) == 0

    def files(path: Path) -> dict[str, int]:
        return partition_files(store.read_manifest(path)["parts"])

    assert files(loose)["band"] == 4
    assert files(auto) == files(manual) == {"band": 1, "exact": 1, "ids": 1}
    for path in (auto, manual):  # the files merged away are gone; only named ones are left
        parts = store.read_manifest(path)["parts"]
        named = {entry_file(path, e, f, p) for e in parts for f in FAMILIES for p in e[f]}
        assert set(path.glob("*=*/*.parquet")) == named
        assert any(p.name.startswith("merged-") for p in named)
    probe = (ids[-15:], texts[-15:])
    answers = [
        RayDedupIndex.open(path, DedupSettings()).add(*probe) for path in (loose, auto, manual)
    ]
    expected = DedupIndex().add(ids, texts)
    assert expected.duplicates.filter(pl.col("id").is_in(probe[0])).height > 3
    for got in answers:
        assert got.keep.tolist() == expected.keep[-15:].tolist()
        assert (
            got.duplicates.to_dicts()
            == expected.duplicates.filter(pl.col("id").is_in(probe[0])).to_dicts()
        )


@pytest.mark.parametrize("spill", [1 << 30, 20], ids=["held", "spilled"])
def test_one_run_of_many_batches_holds_or_spills_its_rows(
    cluster, tmp_path: Path, monkeypatch, spill: int
) -> None:
    """Many adds, one commit (as ``flywheel dedup --index`` runs): the batches' lookup rows
    are held in memory, or written every ``spill`` documents, and found by later batches;
    a crash before the commit leaves the old index, and the commit leaves only named files."""
    from flywheel.data.dedup import ray_index
    from flywheel.data.dedup.partitions import FAMILIES, entry_file

    monkeypatch.setattr(ray_index, "SPILL_DOCS", spill)
    ids, texts = planted_corpus(variants=60, seed=11)
    first = DedupIndex.open(tmp_path / "ix")
    first.add(ids[:30], texts[:30])
    first.commit()
    before = store.read_manifest(tmp_path / "ix")
    crashed = ray_index.RayDedupIndex.open(tmp_path / "ix")
    for a in range(30, len(ids), 9):
        crashed.add(ids[a : a + 9], texts[a : a + 9])
    del crashed  # no commit: as if killed
    assert store.read_manifest(tmp_path / "ix") == before
    index, got = ray_index.RayDedupIndex.open(tmp_path / "ix"), []
    for a in range(30, len(ids), 9):
        got.append(index.add(ids[a : a + 9], texts[a : a + 9]))
    index.commit()
    whole = DedupIndex().add(ids, texts)
    assert np.concatenate([r.keep for r in got]).tolist() == whole.keep[30:].tolist()
    later = pl.concat([r.duplicates for r in got])
    assert later.equals(whole.duplicates.filter(pl.col("id").is_in(ids[30:])))
    assert (later["method"] == "minhash").sum() > 10  # batches met earlier batches of the run
    parts = store.read_manifest(tmp_path / "ix")["parts"]
    named = {entry_file(tmp_path / "ix", e, f, p) for e in parts for f in FAMILIES for p in e[f]}
    assert set((tmp_path / "ix").glob("*=*/*.parquet")) == named
    assert {e["file"] for e in parts} == {f.name for f in (tmp_path / "ix").glob("part-*")}
    assert len(DedupIndex.open(tmp_path / "ix")) == len(set(ids))

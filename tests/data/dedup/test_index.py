"""Dedup semantics: LSH recall and precision, exact dedup, chains, the persistent index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from flywheel.data.dedup import DedupIndex, DedupSettings, deduplicate, jaccard, shingles, store

from .conftest import mutate


def planted(docs: list[str]) -> tuple[list[str], list[str], dict[str, str]]:
    """The docs, then a near copy (3 words changed) of every other one, interleaved late."""
    ids = [f"doc{i}" for i in range(len(docs))]
    texts = list(docs)
    truth = {}
    for i in range(0, len(docs), 2):
        ids.append(f"near{i}")
        texts.append(mutate(docs[i], 3, seed=i))
        truth[f"near{i}"] = f"doc{i}"
    return ids, texts, truth


def test_distinct_documents_are_all_kept(docs: list[str]) -> None:
    result = deduplicate(range(len(docs)), docs)
    assert result.keep.all() and result.duplicates.height == 0
    assert result.stats["kept"] == len(docs)


@pytest.mark.parametrize("verify", ["sketch", "signature"])
def test_planted_near_duplicates_are_found(docs: list[str], verify: str) -> None:
    ids, texts, truth = planted(docs)
    result = deduplicate(ids, texts, DedupSettings(verify=verify))
    found = dict(zip(*result.duplicates.select("id", "duplicate_of"), strict=True))
    assert found == truth  # every near copy, pointing at its original; nothing else
    assert set(result.duplicates["method"]) == {"minhash"}
    assert result.keep[: len(docs)].all()


def test_sketch_similarity_is_the_exact_jaccard(docs: list[str]) -> None:
    """Docs under sketch_size shingles are verified exactly, so similarity == Jaccard."""
    a = " ".join(docs[-1].split()[:200])
    b = mutate(a, 2, seed=7)
    exact = jaccard(shingles(a), shingles(b))
    assert 0.8 <= exact < 1
    result = deduplicate(["a", "b"], [a, b])
    assert result.duplicates["similarity"].to_list() == [pytest.approx(exact)]


def test_threshold_is_applied_to_exact_jaccard(docs: list[str]) -> None:
    base = " ".join(docs[-1].split()[:150])
    variants = [mutate(base, k, seed=k) for k in range(1, 12)]
    result = deduplicate(range(12), [base, *variants], DedupSettings(threshold=0.75))
    for k, text in enumerate(variants, 1):
        removed = not result.keep[k]
        # every variant's best earlier match is the base or another variant: check the base
        best = max(jaccard(shingles(text), shingles(t)) for t in [base, *variants][:k])
        assert removed == (best >= 0.75), (k, best)


def test_exact_duplicates_after_normalization() -> None:
    texts = [
        "Hello   World, this is it",
        "hello world, THIS is it",
        "\thello world, this is it\n",
        "something else entirely",
        "",
        "   ",
    ]
    result = deduplicate(["a", "b", "c", "d", "e", "f"], texts)
    assert result.keep.tolist() == [True, False, False, True, True, False]
    dup = result.duplicates
    assert dup["id"].to_list() == ["b", "c", "f"]
    assert dup["duplicate_of"].to_list() == ["a", "a", "e"]
    assert dup["method"].to_list() == ["exact"] * 3 and dup["similarity"].to_list() == [1.0] * 3
    off = deduplicate(["a", "b"], texts[:2], DedupSettings(exact=False, minhash=False))
    assert off.keep.all()


def test_duplicate_of_is_the_kept_root_of_the_chain(docs: list[str]) -> None:
    a = " ".join(docs[-2].split()[:160])
    b = mutate(a, 4, seed=1)  # a near copy of a
    c = mutate(b, 4, seed=2)  # a near copy of b, farther from a
    s = DedupSettings(threshold=0.7)
    ja_b, jb_c, ja_c = (jaccard(shingles(x), shingles(y)) for x, y in [(a, b), (b, c), (a, c)])
    assert ja_b >= 0.7 and jb_c >= 0.7 and ja_c < 0.7  # the premise: c only matches b
    result = deduplicate(["a", "b", "c", "d"], [a, b, c, b.upper()], s)
    dup = {r["id"]: r for r in result.duplicates.iter_rows(named=True)}
    assert result.keep.tolist() == [True, False, False, False]
    assert dup["c"]["duplicate_of"] == "a" and dup["c"]["method"] == "minhash"
    assert dup["c"]["similarity"] == pytest.approx(jb_c)  # similarity is with its parent b
    assert dup["d"]["duplicate_of"] == "a" and dup["d"]["method"] == "exact"  # via b


def _corpus(docs: list[str]) -> tuple[list[str], list[str]]:
    ids, texts, _ = planted(docs)
    ids += ["late_exact", "late_near"]
    texts += [docs[3].lower(), mutate(docs[5], 2, seed=99)]
    return ids, texts


@pytest.mark.parametrize("reopen", [True, False])
def test_incremental_equals_all_at_once(docs: list[str], tmp_path: Path, reopen: bool) -> None:
    ids, texts = _corpus(docs)
    whole = deduplicate(ids, texts)
    cut = 40
    index = DedupIndex.open(tmp_path / "ix", DedupSettings())
    first = index.add(ids[:cut], texts[:cut])
    index.commit()
    reopened = DedupIndex.open(tmp_path / "ix", DedupSettings()) if reopen else index
    assert len(reopened) == cut
    second = reopened.add(ids[cut:], texts[cut:])
    assert second.stats["new_docs"] == len(ids) - cut  # old signatures are not recomputed
    assert np.array_equal(np.concatenate([first.keep, second.keep]), whole.keep)
    both = pl.concat([first.duplicates, second.duplicates])
    assert both.equals(whole.duplicates)
    assert whole.stats["exact_removed"] >= 1 and whole.stats["minhash_removed"] >= 10


def test_re_adding_known_ids_is_idempotent(docs: list[str], tmp_path: Path) -> None:
    ids, texts = _corpus(docs)
    index = DedupIndex.open(tmp_path / "ix")
    before = index.add(ids, texts)
    index.commit()
    again = DedupIndex.open(tmp_path / "ix").add(ids, ["changed text"] * len(ids))
    assert again.stats["new_docs"] == 0
    assert np.array_equal(again.keep, before.keep)
    assert again.duplicates.equals(before.duplicates)
    assert (again.duplicates["id"] != again.duplicates["duplicate_of"]).all()
    repeated = deduplicate(["x", "y", "x"], ["one two three", "four five six", "other"])
    assert repeated.keep.tolist() == [True, True, True] and repeated.stats["new_docs"] == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_perm", 64), ("ngram", 3), ("seed", 2), ("lowercase", False), ("threshold", 0.5)],
)
def test_incompatible_settings_are_refused(tmp_path: Path, field: str, value) -> None:
    DedupIndex.open(tmp_path / "ix", DedupSettings()).commit()
    named = "bands" if field == "threshold" else field  # threshold moves the optimal bands
    with pytest.raises(ValueError, match=named):
        DedupIndex.open(tmp_path / "ix", DedupSettings(**{field: value}))


def test_an_index_of_an_older_hash_scheme_is_refused(docs: list[str], tmp_path: Path) -> None:
    """Signatures of another scheme must not be mixed with this one's: a clear error."""
    ids, texts = _corpus(docs)
    index = DedupIndex.open(tmp_path / "ix")
    index.add(ids, texts)
    index.commit()
    manifest = store.read_manifest(tmp_path / "ix")
    assert manifest["hash_scheme"] == "flywheel-minhash-v2"
    store.write_manifest(
        tmp_path / "ix", {**manifest, "hash_scheme": "flywheel-minhash-v1"}, manifest["parts"]
    )
    with pytest.raises(ValueError, match="flywheel-minhash-v1.*delete the index directory"):
        DedupIndex.open(tmp_path / "ix")


def test_crash_before_commit_leaves_the_old_index(docs: list[str], tmp_path: Path) -> None:
    ids, texts = _corpus(docs)
    index = DedupIndex.open(tmp_path / "ix")
    index.add(ids[:30], texts[:30])
    index.commit()
    index.add(ids[30:], texts[30:])  # never committed: the process "dies" here
    # a crash between writing a part and the manifest leaves an orphan part behind
    orphan = store.write_part(
        tmp_path / "ix",
        1,
        {
            "id": ["ghost"],
            "root": [30],
            "method": [0],
            "similarity": [0.0],
            "exact": [1],
            "lsh": [False],
            "sig": np.zeros((1, 128), np.uint32),
            "sk_values": np.zeros(0, np.uint32),
            "sk_len": np.zeros(1, np.int64),
        },
    )
    survivor = DedupIndex.open(tmp_path / "ix")
    assert len(survivor) == 30
    result = survivor.add(ids, texts)
    assert result.stats["new_docs"] == len(ids) - 30
    assert np.array_equal(result.keep, deduplicate(ids, texts).keep)
    survivor.commit()
    assert not (tmp_path / "ix" / orphan["file"]).exists()
    assert len(DedupIndex.open(tmp_path / "ix")) == len(ids)


def test_settings_validation() -> None:
    with pytest.raises(ValidationError, match="both bands and rows"):
        DedupSettings(bands=8)
    with pytest.raises(ValidationError, match="exceeds num_perm"):
        DedupSettings(bands=20, rows=10)
    with pytest.raises(ValidationError, match="extra"):
        DedupSettings(treshold=0.5)
    with pytest.raises(ValidationError):
        DedupSettings(threshold=0.0)
    assert DedupSettings(bands=16, rows=8).resolve_bands() == (16, 8)
    b, r = DedupSettings().resolve_bands()
    assert b * r <= 128

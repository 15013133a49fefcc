"""The Great Expectations document suites: the exact-duplicate check is independent of the
dedup engine (it fails on an engine that stops normalizing), and one GX context serves many
products and repeated checks in a process.

    .venv/bin/python -m pytest -q tests/data/test_validation.py
"""

from __future__ import annotations

import ast
from pathlib import Path

import polars as pl
import pytest

import flywheel.data.validation as validation
from flywheel.core.shards import ShardSet, ShardWriter
from flywheel.data import dedup
from flywheel.data.dedup import minhash
from flywheel.data.validation import exact_duplicate_key, validate_shardset

# Three documents, each with case/whitespace variants: a correct engine keeps a, d and f.
CORPUS = {
    "a": "The Quick brown fox jumps over the lazy dog",
    "b": "the quick brown fox  jumps over the lazy dog\n",
    "c": "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "d": "Pack my box with five dozen liquor jugs",
    "e": "pack   my box with five dozen liquor jugs",
    "f": "Sphinx of black quartz, judge my vow",
}


def _shards(path: Path, ids: list[str], texts: list[str]) -> ShardSet:
    with ShardWriter(path) as w:
        w.write(pl.DataFrame({"id": ids, "source": ["s"] * len(ids), "text": texts}))
        return w.commit()


def _deduplicated(path: Path) -> ShardSet:
    ids, texts = list(CORPUS), list(CORPUS.values())
    keep = dedup.deduplicate(ids, texts).keep
    kept = [i for i, k in zip(ids, keep, strict=True) if k]
    return _shards(path, kept, [CORPUS[i] for i in kept])


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("Hello\tWorld\n", "hello world"),
        ("  A\u00a0\u2003B  ", "a b"),  # Unicode spaces are whitespace
        ("x\x1fy\x1cz", "x y z"),  # so are the ASCII separators, as for str.split()
        ("a\u200bb", "a\u200bb"),  # a zero-width space is not whitespace
        ("ΟΔΟΣ ΚΑΙ", "οδος και"),  # final sigma
        ("ﬁ Straße", "ﬁ straße"),  # no NFKC, no casefold: the engine does neither
        ("", ""),
    ],
)
def test_exact_duplicate_key_is_the_documented_definition(text: str, key: str) -> None:
    got = pl.DataFrame({"t": [text]}).select(exact_duplicate_key(pl.col("t")))["t"].item()
    assert got == key


def test_duplicate_check_passes_a_correct_engine(tmp_path: Path) -> None:
    shards = _deduplicated(tmp_path / "ok")
    assert shards.num_rows == 3
    report = validate_shardset(shards, "deduplicated_shards", unique_text=True)
    assert report.success, report.summary()


def test_duplicate_check_catches_an_engine_that_stops_normalizing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine's bug: every normalization it owns becomes the identity. The code of the
    # functions is replaced, not the names, so whoever holds a reference gets the bug too.
    # The local engine normalizes on bytes (MinHasher.normalized): there the bug is that it
    # stops lower-casing (its whitespace rule is what its word hashes split on); the variants
    # below differ in case, so it keeps them all just the same.
    identity = lambda self, texts: list(texts)  # noqa: E731
    monkeypatch.setattr(minhash.MinHasher.normalize, "__code__", identity.__code__)
    no_lower = lambda self, texts: _pack(t.encode("utf-8", "surrogatepass") for t in texts)  # noqa: E731, F821
    monkeypatch.setattr(minhash.MinHasher.normalized, "__code__", no_lower.__code__)
    monkeypatch.setattr(minhash.normalize, "__code__", (lambda text, lowercase=True: text).__code__)
    shards = _deduplicated(tmp_path / "broken")
    assert shards.num_rows == len(CORPUS)  # the broken engine kept every variant
    report = validate_shardset(shards, "deduplicated_shards", unique_text=True)
    assert not report.success
    [failure] = report.failures
    assert failure.column == "norm_hash" and failure.unexpected == 5  # a, b, c, d, e


def test_validation_does_not_import_the_dedup_engine() -> None:
    tree = ast.parse(Path(validation.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.startswith("flywheel.data.dedup") for m in imported), imported


def test_one_context_serves_products_and_repeats(tmp_path: Path) -> None:
    short = _shards(tmp_path / "short", ["1", "2"], ["tiny", "also tiny"])
    twins = _shards(tmp_path / "twins", ["1", "2", "3"], ["Same  text", "same text", "other"])
    context = validation._context()

    def run_all() -> list[tuple[bool, set[str | None]]]:
        reports = [
            validate_shardset(short, "raw_a"),
            validate_shardset(short, "raw_a", max_chars=5),  # same suite, other bounds
            validate_shardset(twins, "deduplicated_shards", unique_text=True),
            validate_shardset(twins, "raw_b"),
            validate_shardset(short, "raw_a", min_rows=3),
        ]
        return [(r.success, {o.column for o in r.failures}) for r in reports]

    expected = [(True, set()), (False, {"n_chars"}), (False, {"norm_hash"}), (True, set())]
    expected.append((False, {None}))  # the table row count
    assert run_all() == expected
    suites = len(context.suites.all())
    assert run_all() == expected  # repeats reuse the registered suites and answer the same
    assert validation._context() is context and len(context.suites.all()) == suites
    # Results are read from each run's return value; none pile up in the context.
    assert context.validation_results_store.list_keys() == []

"""Shingling rules, and the vectorized signatures/sketches against a pure-Python reference."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from flywheel.data.dedup import MinHasher, jaccard, shingles
from flywheel.data.dedup.minhash import _B, _K, _R, EMPTY, splitmix64

from .conftest import mutate, prose

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1


def test_shingles_are_a_set_of_word_ngrams() -> None:
    assert shingles("The quick brown fox jumps over", 5) == {
        ("the", "quick", "brown", "fox", "jumps"),
        ("quick", "brown", "fox", "jumps", "over"),
    }
    assert shingles("a a a a a a a a", 5) == {("a",) * 5}  # a set: repeats collapse
    assert shingles("One\ttwo\nthree\u00a0four  five", 5) == {
        ("one", "two", "three", "four", "five")
    }  # str.split()
    assert shingles("Keep Case here ok now", 5, lowercase=False) == {
        ("Keep", "Case", "here", "ok", "now")
    }
    assert shingles("a b c d e f", 2) == {
        ("a", "b"),
        ("b", "c"),
        ("c", "d"),
        ("d", "e"),
        ("e", "f"),
    }


def test_short_and_empty_documents() -> None:
    assert shingles("Only three words", 5) == {("only", "three", "words")}
    assert shingles("x", 5) == {("x",)}
    assert shingles("", 5) == set() and shingles(" \n\t ", 5) == set()
    assert jaccard(set(), set()) == 0.0  # empty docs are never near-duplicates


# -- a pure-Python reference of the documented hash scheme --------------------------------
def _fmix(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & M64
    return h ^ (h >> 33)


def _word(word: str) -> int:
    data = word.encode("utf-8", "surrogatepass")
    h = sum(c * pow(int(_B), i, 1 << 64) for i, c in enumerate(data)) + len(data) * int(_K)
    return _fmix(h & M64)


def _shingle(words: tuple[str, ...]) -> int:
    return _fmix(sum(_word(w) * int(r) for w, r in zip(words, _R, strict=False)) & M64) >> 32


def reference(text: str, num_perm: int, sketch: int) -> tuple[list[int], list[int]]:
    """Signature and bottom-m sketch straight from the definitions, over ``shingles(text)``."""
    xs = sorted({_shingle(s) for s in shingles(text, 5)})
    ab = [int(v) >> 32 for v in splitmix64(1, 2 * num_perm)]
    sig = [
        min(((a * x + b) & M32 for x in xs), default=int(EMPTY))
        for a, b in zip([a | 1 for a in ab[:num_perm]], ab[num_perm:], strict=True)
    ]
    return sig, xs[:sketch]


def test_signatures_and_sketches_equal_the_reference_definition() -> None:
    long = prose(1)[0]  # > 1024 shingles: crosses reduceat blocks
    texts = [
        "Only three words",
        "x",
        "",
        "exactly five words right here",
        "Ünïcödé wörds, ümläuts → and emoji 🎉 mixed with ASCII text " * 3,
        " ".join(long.split()[:70]),  # just over the 64-shingle cut between the two paths
        " ".join(long.split()[:40]),
        long,
        "a a a a a a a a a",
        "tab\tsep\nnew line words here",
    ]
    hasher = MinHasher(num_perm=32, sketch_size=50)
    out = hasher.sketches(hasher.normalize(texts))
    start = 0
    for i, text in enumerate(texts):
        sig, sketch = reference(text, 32, 50)
        assert out.sig[i].tolist() == sig, text[:40]
        n = int(out.lengths[i])
        assert out.values[start : start + n].tolist() == sketch, text[:40]
        start += n
    assert (out.sig[2] == EMPTY).all() and out.lengths[2] == 0


def test_large_batches_equal_small_batches() -> None:
    """Over 4 MiB of text is split into sub-batches; results must not depend on the split."""
    base = prose(40)
    texts = [mutate(t, 3, seed) for seed in range(12) for t in base][:2500]
    assert sum(map(len, texts)) > 4 << 20
    hasher = MinHasher(num_perm=64)
    whole = hasher.signatures(texts)
    pieces = np.concatenate([hasher.signatures(texts[i : i + 97]) for i in range(0, 2500, 97)])
    assert np.array_equal(whole, pieces)


def test_signature_agreement_estimates_exact_jaccard() -> None:
    base = prose(50)
    rng = np.random.default_rng(0)
    pairs = []
    for seed, text in enumerate(base * 4):
        n = len(text.split())
        changes = int(n * rng.uniform(0.0, 0.25))
        pairs.append((text, mutate(text, changes, seed)))
    hasher = MinHasher(num_perm=128)
    a = hasher.signatures([p[0] for p in pairs])
    b = hasher.signatures([p[1] for p in pairs])
    estimate = (a == b).mean(axis=1)
    exact = np.array([jaccard(shingles(x), shingles(y)) for x, y in pairs])
    assert exact.min() < 0.4 and exact.max() > 0.95  # the pairs span the range
    error = estimate - exact
    assert abs(error.mean()) < 0.01  # unbiased
    assert np.abs(error).mean() < 0.03  # sd at k=128 is <= sqrt(.25/128) = 0.044
    assert np.abs(error).max() < 0.2


def test_permutations_are_independent_enough() -> None:
    """The 32-bit multiply-add permutations are fixed bijections of already-hashed shingles;
    were they correlated with each other, the agreement estimate would spread wider than the
    binomial sqrt(J (1 - J) / k) of k independent permutations. 400 pairs at J = 0.8."""
    rng = np.random.default_rng(0)
    k, size, inter = 128, 90, 80  # |A| = |B| = 90, |A & B| = 80: J = 80 / 100
    hasher = MinHasher(num_perm=k, ngram=1)
    a_texts, b_texts = [], []
    for _ in range(400):
        words = [f"w{v}" for v in rng.choice(10**9, 2 * size - inter, replace=False)]
        a_texts.append(" ".join(words[:size]))
        b_texts.append(" ".join(words[:inter] + words[size:]))
    estimate = (hasher.signatures(a_texts) == hasher.signatures(b_texts)).mean(axis=1)
    j = inter / (2 * size - inter)
    binomial = np.sqrt(j * (1 - j) / k)
    assert abs(estimate.mean() - j) < 0.01
    assert 0.85 * binomial < estimate.std() < 1.15 * binomial, (estimate.std(), binomial)


def test_signatures_do_not_depend_on_the_process() -> None:
    """No salted hash(): another interpreter with another hash seed gives the same bytes."""
    code = (
        "import hashlib\nfrom flywheel.data.dedup import MinHasher\n"
        "s = MinHasher(64).signatures(['some text to hash here and more words', 'x y'])\n"
        "print(hashlib.sha256(s.tobytes()).hexdigest())"
    )
    digests = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        digests.add(run.stdout.strip())
    assert len(digests) == 1


def test_word_hashes_do_not_depend_on_the_window_cut() -> None:
    """Buffers over 1 MiB are hashed in pieces cut at spaces (even around a 3 MB 'word')."""
    from flywheel.data.dedup.minhash import _word_hashes, _word_hashes_window

    words = (prose(3)[1] * 200).split()
    words.insert(1000, "x" * 3_000_000)
    buf = np.frombuffer(" ".join(words).encode(), dtype=np.uint8)
    assert buf.size > 4 << 20
    assert np.array_equal(_word_hashes(buf), _word_hashes_window(buf))

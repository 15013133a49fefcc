"""The byte-level normalization equals the str definition (``minhash.normalize``) exactly."""

from __future__ import annotations

import random

import numpy as np

from flywheel.data.dedup import MinHasher, normalize
from flywheel.data.dedup.minhash import exact_hash
from flywheel.data.dedup.textbytes import _SPACES, concat, exact_hashes, normalize_bytes

from .conftest import prose

# every whitespace character, and look-alikes that are not whitespace (zero-width space,
# a lone surrogate, letters whose lower-case form is longer)
CHARS = [*_SPACES, "\u200b", "\ud800", "a", "B", "é", "İ", "Σ", "🎉", "x"]


def texts_of(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(CHARS) for _ in range(rng.randint(0, 24))) for _ in range(n)]


def spans(nz) -> list[bytes]:
    return [bytes(nz.buf[s : s + n]) for s, n in zip(nz.starts, nz.lengths, strict=True)]


def test_the_interpreter_defines_29_whitespace_characters() -> None:
    assert len(_SPACES) == 29 and all(len(("a" + c + "b").split()) == 2 for c in _SPACES)


def test_normalized_bytes_equal_the_str_definition() -> None:
    texts = texts_of(0, 3000) + prose(5) + ["", "  ", "\n"]
    for lowercase in (True, False):
        hasher = MinHasher(num_perm=16, lowercase=lowercase)
        want = [normalize(t, lowercase) for t in texts]
        nz = hasher.normalized(texts)
        assert spans(nz) == [w.encode("utf-8", "surrogatepass") for w in want]
        assert nz.n_words.tolist() == [len(w.split()) for w in want]
        assert exact_hashes(nz).tolist() == [exact_hash(w) for w in want]


def test_take_and_concat_repack_the_same_texts() -> None:
    texts = texts_of(1, 500)
    encoded = [normalize(t).encode("utf-8", "surrogatepass") for t in texts]
    parts = [normalize_bytes(encoded[i : i + 70]) for i in range(0, 500, 70)]
    whole = concat(parts)
    assert spans(whole) == encoded
    assert bytes(whole.buf) == b" ".join(e for e in encoded if e)  # single spaces between
    rows = np.array(sorted(random.Random(2).sample(range(500), 300)))
    taken = whole.take(rows)
    assert spans(taken) == [encoded[r] for r in rows]
    assert bytes(taken.buf) == b" ".join(encoded[r] for r in rows if encoded[r])


def test_signatures_from_bytes_equal_signatures_from_strings() -> None:
    """The Ray engine hashes normalized strings (``sketches``), the local one the bytes."""
    texts = texts_of(3, 400) + prose(20)
    hasher = MinHasher(num_perm=32, sketch_size=20)
    a = hasher.sketches(hasher.normalize(texts))
    b = hasher.sketches_of(hasher.normalized(texts))
    assert np.array_equal(a.sig, b.sig) and np.array_equal(a.values, b.values)
    assert np.array_equal(a.lengths, b.lengths)

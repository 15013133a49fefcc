"""MinHash signatures of word n-gram shingle sets, vectorized with numpy over whole batches.

    python -c "from flywheel.data.dedup.minhash import *; print(MinHasher().signatures(['a b c']))"

Shingling (``shingles`` is the pure-Python definition; the vectorized path hashes exactly
these sets): the text is lower-cased (optional) and split with ``str.split()``; the shingles
are the SET of word n-grams; a document of 1 <= m < n words is one shingle of all its words;
an empty document has no shingles (its signature is all 0xFFFFFFFF and it never matches).

Neither engine splits a text in Python: ``MinHasher.normalized`` lower-cases each text
(``str.lower``) and normalizes whitespace on the UTF-8 bytes of the whole batch
(``flywheel.data.dedup.textbytes``, byte for byte ``normalize``); ``sketches`` of strings
already normalized in Python (``MinHasher.normalize``, the reference the tests compare
against) packs them the same way, so both hash the same bytes.

Hash scheme (``HASH_SCHEME`` is recorded in index manifests; bump it on any change):

* word hash: over the UTF-8 bytes c_0..c_{L-1} of a word, h = fmix64(sum_i c_i * B^i + L * K)
  in wrapping uint64 arithmetic, with B, K fixed odd constants from splitmix64. A polynomial is
  what one prefix sum can produce for every word of the batch at once: with C the cumsum of
  c_i * B^i over the whole buffer, a word at [s, e) is (C[e-1] - C[s-1]) * B^-s; no Python
  loop over words.
* shingle hash: x = fmix64(sum_k w_{j+k} * R[k]) >> 32, k < n (or k < m for a short doc),
  one multiply-add per position over the whole batch; windows that would cross a document
  boundary are masked out, so no shingle mixes two documents.
* permutations: h_i(x) = (a_i * x + b_i) mod 2^32, a_i odd, with a_i, b_i the high halves
  of splitmix64 outputs. x is already an avalanched 32-bit hash (fmix64's top half), so each
  h_i, a bijection of Z/2^32, makes the argmin over A | B uniform: P(min agrees) = J for every
  permutation. What the family must add is independence BETWEEN permutations; measured on
  random sets (tests/data/dedup/test_minhash.py), the agreement estimate's standard deviation
  is the binomial sqrt(J (1 - J) / k), as with the previous 64-bit multiply-add-shift (v1).
  32-bit lanes are the point: twice as many per SIMD instruction, and a native multiply and
  min, where uint64 needs emulation or AVX-512; the min step ran ~6x faster than in uint64.

Everything is derived from splitmix64 (not numpy's RNG streams, nor Python's salted ``hash``),
so signatures are identical across processes, machines and library versions.

The min over each document's shingles is the only segmented step. Documents with more than
``_LONG`` shingles go through ``np.minimum.reduceat`` on a (num_perm, chunk) block, whose
per-segment cost is then negligible; shorter documents (most docstrings) are padded, by
repeating their last shingle (a repeat cannot change a min), to a few size classes and reduced
with plain elementwise ``np.minimum`` over the padding axis, which has no per-document cost.

Bottom-m sketches (``sketch_size`` > 0: the m smallest distinct shingle hashes x of each doc,
used by ``flywheel.data.dedup.verify``) come from one sort of (doc << 32 | x) per sub-batch.

Speed (bench/dedup.py, 233 MB of real documentation, one thread, on a loaded 2-core machine):
~27 MB/s for signatures from raw text, 1.5x ``MinHash.bulk`` on our precomputed shingle hashes;
datasketch's per-shingle ``MinHash.update`` loop does ~1 MB/s.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from flywheel.data.dedup import textbytes

HASH_SCHEME = "flywheel-minhash-v2"  # v1: 64-bit multiply-add-shift permutations
EMPTY = np.uint32(0xFFFFFFFF)  # signature value of a document without shingles

_M64 = (1 << 64) - 1
_LONG = 64  # docs with more shingles use reduceat; fewer are padded to a size class
_CLASSES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # padding waste <= 1/3, ~15% typical
_BLOCK = 1024  # short docs per permutation block: 1024 x 128 x 4 B = 512 KiB, in L2
_LONG_BLOCK = 8192  # shingles per block of long docs: 128 x 8192 x 4 B = 4 MiB (of 2K..16K,
# measured fastest: fewer reduceat calls outweigh spilling from L2 to L3)
_SUB_BATCH_BYTES = 4 << 20  # text per vectorized pass, bounding the per-byte temporaries
_WORD_WINDOW = 1 << 20  # bytes per word-hash pass: power tables of 2^20 x 8 B = 8 MiB each


def splitmix64(seed: int, n: int) -> np.ndarray:
    """The first ``n`` outputs of splitmix64 seeded with ``seed`` (uint64, wrapping)."""
    gamma = np.uint64(0x9E3779B97F4A7C15)
    z = np.uint64(seed & _M64) + gamma * np.arange(1, n + 1, dtype=np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer, an avalanching bijection (in place on ``h``)."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


_HASH_CONSTANTS = splitmix64(0x666C7977686565, 2 + 32) | np.uint64(1)  # odd constants
_B = _HASH_CONSTANTS[0]  # base of the per-word polynomial
_K = _HASH_CONSTANTS[1]  # per byte of word length
_R = _HASH_CONSTANTS[2:]  # per word position in a shingle (ngram <= 32)


def normalize(text: str, lowercase: bool = True) -> str:
    """Words joined by single spaces (lower-cased): what shingles and exact hashes see."""
    return " ".join((text.lower() if lowercase else text).split())


def shingles(text: str, ngram: int = 5, lowercase: bool = True) -> set[tuple[str, ...]]:
    """The shingle set of ``text``, in pure Python: the ground truth the signatures estimate."""
    words = (text.lower() if lowercase else text).split()
    if not words:
        return set()
    if len(words) < ngram:
        return {tuple(words)}
    return set(zip(*(words[i:] for i in range(ngram)), strict=False))


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity |a & b| / |a | b| (two empty sets: 0, never duplicates)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def exact_hash(norm: str) -> int:
    """Stable 64-bit hash of a normalized text (blake2b), for exact-duplicate detection."""
    digest = hashlib.blake2b(norm.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass
class Sketches:
    """Per document: its MinHash signature, and its bottom-m sketch: the m smallest distinct
    32-bit shingle hashes, ascending (the whole shingle set when it has <= m shingles)."""

    sig: np.ndarray  # (n_docs, num_perm) uint32
    values: np.ndarray  # uint32, the sketches concatenated
    lengths: np.ndarray  # int64 per doc; values of doc d start at sum(lengths[:d])


class MinHasher:
    """Computes uint32 MinHash signatures of shape (n_docs, num_perm) for batches of texts,
    and (``sketch_size`` > 0) bottom-m sketches of the same shingle hashes."""

    def __init__(
        self,
        num_perm: int = 128,
        ngram: int = 5,
        lowercase: bool = True,
        seed: int = 1,
        sketch_size: int = 0,
    ) -> None:
        if not 1 <= ngram <= len(_R):
            raise ValueError(f"ngram must be between 1 and {len(_R)}, got {ngram}")
        self.num_perm, self.ngram, self.lowercase, self.seed = num_perm, ngram, lowercase, seed
        self.sketch_size = sketch_size
        ab = (splitmix64(seed, 2 * num_perm) >> np.uint64(32)).astype(np.uint32)
        self._a, self._b = ab[:num_perm] | np.uint32(1), ab[num_perm:].copy()

    def normalize(self, texts: Sequence[str]) -> list[str]:
        low = self.lowercase
        return [" ".join((t.lower() if low else t).split()) for t in texts]

    def normalized(self, texts: Sequence[str]) -> textbytes.Normalized:
        """The texts lower-cased (optional, ``str.lower``) and whitespace-normalized as bytes:
        what ``normalize`` gives, without a Python string per word (``textbytes``)."""
        low = self.lowercase
        return _pack((t.lower() if low else t).encode("utf-8", "surrogatepass") for t in texts)

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """Signatures only (no sketches), shape (len(texts), num_perm), uint32."""
        return self.sketches_of(self.normalized(texts), sketch_size=0).sig

    def sketches(self, norms: Sequence[str]) -> Sketches:
        """Signatures and bottom-m sketches of already-normalized texts."""
        return self.sketches_of(_pack(s.encode("utf-8", "surrogatepass") for s in norms))

    def sketches_of(self, nz: textbytes.Normalized, sketch_size: int | None = None) -> Sketches:
        """Signatures and (``sketch_size``, default the hasher's) bottom-m sketches of a
        normalized batch, in sub-batches of ~4 MiB of text (bounding the temporaries)."""
        m = self.sketch_size if sketch_size is None else sketch_size
        n = nz.lengths.size
        bounds = [0]
        if n:  # cut after the text in which each multiple of the sub-batch size falls
            ends = np.cumsum(nz.lengths + 1)
            marks = np.arange(_SUB_BATCH_BYTES, ends[-1], _SUB_BATCH_BYTES)
            bounds += [c for c in np.unique(np.searchsorted(ends, marks) + 1).tolist() if c < n]
        bounds.append(n)
        parts = [self._sub_batch(nz, lo, hi, m) for lo, hi in zip(bounds, bounds[1:], strict=False)]
        if len(parts) == 1:
            return parts[0]
        return Sketches(
            np.concatenate([p.sig for p in parts]),
            np.concatenate([p.values for p in parts]),
            np.concatenate([p.lengths for p in parts]),
        )

    # -- the vectorized pipeline: bytes -> word hashes -> shingle hashes -> min-permutations --
    def _sub_batch(self, nz: textbytes.Normalized, lo: int, hi: int, sketch_size: int):
        """Sketches of texts lo..hi-1 of ``nz``."""
        n, n_words = hi - lo, nz.n_words[lo:hi]
        if n_words.sum() == 0:
            empty = np.full((n, self.num_perm), EMPTY, dtype=np.uint32)
            return Sketches(empty, np.empty(0, np.uint32), np.zeros(n, np.int64))
        full = lo + np.flatnonzero(n_words)  # the buffer holds them, joined by single spaces
        first, last = full[0], full[-1]
        words = _word_hashes(nz.buf[nz.starts[first] : nz.starts[last] + nz.lengths[last]])
        assert words.size == n_words.sum(), "word split disagrees with str.split"
        x, counts = _shingle_hashes(words, n_words, self.ngram)
        offsets = np.zeros(n, dtype=np.int64)
        np.cumsum(counts[:-1], out=offsets[1:])
        sig = np.full((n, self.num_perm), EMPTY, dtype=np.uint32)
        self._min_short(x, offsets, counts, sig)
        self._min_long(x, offsets, counts, sig)
        values, lengths = _bottom(x, counts, sketch_size)
        return Sketches(sig, values, lengths)

    def _permute(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out[d, i] = a_i * x[d] + b_i (mod 2^32): one (len(x), num_perm) block."""
        np.multiply(x[:, None], self._a[None, :], out=out)
        np.add(out, self._b[None, :], out=out)
        return out

    def _min_short(self, x, offsets, counts, sig) -> None:
        """Docs with 1.._LONG shingles: pad to a size class, min over the padding axis."""
        lo = 0
        for size in _CLASSES:
            docs = np.flatnonzero((counts > lo) & (counts <= size))
            lo = size
            for c0 in range(0, docs.size, _BLOCK):
                d = docs[c0 : c0 + _BLOCK]
                # shingle j of each doc, the last one repeated once a doc runs out
                last = counts[d] - 1
                acc = np.empty((d.size, self.num_perm), dtype=np.uint32)
                tmp = np.empty_like(acc)
                self._permute(x[offsets[d]], acc)
                for j in range(1, size):
                    self._permute(x[offsets[d] + np.minimum(j, last)], tmp)
                    np.minimum(acc, tmp, out=acc)
                sig[d] = acc

    def _min_long(self, x, offsets, counts, sig) -> None:
        """Docs with > _LONG shingles: segmented min with reduceat on (num_perm, block)."""
        docs = np.flatnonzero(counts > _LONG)
        if docs.size == 0:
            return
        # gather their shingles contiguously, in doc order
        lens = counts[docs]
        seg_starts = np.zeros(docs.size, dtype=np.int64)
        np.cumsum(lens[:-1], out=seg_starts[1:])
        idx = np.repeat(offsets[docs] - seg_starts, lens) + np.arange(lens.sum())
        xl = x[idx]
        acc = np.full((docs.size, self.num_perm), EMPTY, dtype=np.uint32)
        block = np.empty((self.num_perm, _LONG_BLOCK), dtype=np.uint32)
        for s in range(0, xl.size, _LONG_BLOCK):
            xc = xl[s : s + _LONG_BLOCK]
            blk = block[:, : xc.size]
            np.multiply(self._a[:, None], xc[None, :], out=blk)
            np.add(blk, self._b[:, None], out=blk)
            # the docs overlapping this block, and where each one's piece starts in it
            first = np.searchsorted(seg_starts, s, side="right") - 1
            last = np.searchsorted(seg_starts, s + xc.size, side="left")
            starts = np.maximum(seg_starts[first:last] - s, 0)
            mins = np.minimum.reduceat(blk, starts, axis=1).T
            np.minimum(acc[first:last], mins, out=acc[first:last])
        sig[docs] = acc


def _pack(encoded: Iterable[bytes]) -> textbytes.Normalized:
    """``textbytes.normalize_bytes`` over batches of ~4 MiB (bounding its temporaries)."""
    parts, batch, size = [], [], 0
    for b in encoded:
        batch.append(b)
        size += len(b)
        if size >= _SUB_BATCH_BYTES:
            parts.append(textbytes.normalize_bytes(batch))
            batch, size = [], 0
    if batch or not parts:
        parts.append(textbytes.normalize_bytes(batch))
    return textbytes.concat(parts)


_powers = np.ones(1, dtype=np.uint64)  # B^i, grown on demand (module cache)
_inverse_powers = np.ones(1, dtype=np.uint64)  # B^-i mod 2^64: B is odd, so invertible


def _power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    global _powers, _inverse_powers
    if _powers.size < n:
        size = 1 << max(n - 1, 1).bit_length()
        _powers = np.full(size, _B, dtype=np.uint64)
        _powers[0] = 1
        np.multiply.accumulate(_powers, out=_powers)  # wraps mod 2^64, exact
        _inverse_powers = np.full(size, np.uint64(pow(int(_B), -1, 1 << 64)), dtype=np.uint64)
        _inverse_powers[0] = 1
        np.multiply.accumulate(_inverse_powers, out=_inverse_powers)
    return _powers[:n], _inverse_powers[:n]


def _bottom(x: np.ndarray, counts: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The m smallest distinct values of each doc's shingle hashes, ascending.

    One sort of (doc << 32 | x) orders every doc's hashes at once; dropping repeats of the
    previous key makes them sets; a doc's rank of each value is its index minus the doc's
    first index. (SIMD np.sort makes this ~10 ms per MB of text.)"""
    if m == 0:
        return np.empty(0, np.uint32), np.zeros(counts.size, np.int64)
    key = np.repeat(np.arange(counts.size, dtype=np.uint64) << np.uint64(32), counts)
    key |= x  # x is uint32: widened to uint64 by the in-place or
    key.sort()
    distinct = np.ones(key.size, dtype=np.bool_)
    distinct[1:] = key[1:] != key[:-1]
    key = key[distinct]
    doc = (key >> np.uint64(32)).astype(np.int64)
    first = np.searchsorted(doc, np.arange(counts.size))
    keep = np.arange(key.size) - first[doc] < m
    return key[keep].astype(np.uint32), np.bincount(doc[keep], minlength=counts.size)


def _word_hashes(buf: np.ndarray) -> np.ndarray:
    """Hash of every space-separated word of ``buf`` (uint8), as described in the module doc;
    buffers over ``_WORD_WINDOW`` bytes are cut at spaces so the power tables stay small."""
    if buf.size <= _WORD_WINDOW:
        return _word_hashes_window(buf)
    spaces = np.flatnonzero(buf == 32)
    first_after = np.searchsorted(spaces, np.arange(_WORD_WINDOW, buf.size, _WORD_WINDOW))
    cuts = np.unique(spaces[first_after[first_after < spaces.size]])
    # each piece ends before a cut space and the next starts after it: no word is split
    bounds = zip([-1, *cuts.tolist()], [*cuts.tolist(), buf.size], strict=True)
    return np.concatenate([_word_hashes_window(buf[a + 1 : b]) for a, b in bounds])


def _word_hashes_window(buf: np.ndarray) -> np.ndarray:
    """Word hashes of a buffer that starts at a word and ends at a word's end."""
    n = buf.size
    spaces = np.flatnonzero(buf == 32)
    starts = np.empty(spaces.size + 1, dtype=np.int64)
    starts[0], starts[1:] = 0, spaces + 1
    ends = np.empty_like(starts)
    ends[:-1], ends[-1] = spaces, n
    powers, inverse = _power_tables(n)
    csum = buf.astype(np.uint64)
    csum *= powers
    np.cumsum(csum, out=csum)  # uint64 wraps: prefix sums are exact mod 2^64
    # sum_{s<=i<e} c_i B^i = C[e-1] - C[s-1] (the separating space sits in C[s-1] and
    # cancels); times B^-s it becomes the position-independent sum_i c_i B^(i-s)
    h = csum[ends - 1]
    h[1:] -= csum[starts[1:] - 1]
    h *= inverse[starts]
    h += (ends - starts).astype(np.uint64) * _K
    return fmix64(h)


def _shingle_hashes(
    words: np.ndarray, n_words: np.ndarray, ngram: int
) -> tuple[np.ndarray, np.ndarray]:
    """(x, counts): 32-bit shingle hashes (uint32), contiguous per doc, and their counts."""
    total = words.size
    doc_end = np.repeat(np.cumsum(n_words), n_words)  # word index one past each word's doc
    remaining = doc_end - np.arange(total)  # words from j to the end of its doc, >= 1
    # g[j] = sum_{k < ngram, k < remaining[j]} words[j + k] * R[k]
    g = words * _R[0]
    # k stops below total: with fewer words than ngram in the batch, total - k < 0 would slice
    # from the end instead of giving nothing
    for k in range(1, min(ngram, total)):
        inside = remaining[: total - k] > k
        g[: total - k] += np.where(inside, words[k:] * _R[k], np.uint64(0))
    # keep full windows, and the one window starting a short doc (remaining == its length)
    doc_len = np.repeat(n_words, n_words)
    keep = (remaining >= ngram) | ((remaining == doc_len) & (doc_len < ngram))
    x = (fmix64(g[keep]) >> np.uint64(32)).astype(np.uint32)
    counts = np.where(n_words >= ngram, n_words - ngram + 1, np.minimum(n_words, 1))
    return x, counts

"""Perceptual hashes as uint64, their Hamming distances, and the banded candidate search.

    python -c "from flywheel.data.images.phash import *; print(probe_masks(16, 2).size)"

The hash is ``imagehash.phash`` bit for bit (a test checks it): grey, LANCZOS-resized to 32x32,
2-D DCT-II, the 8x8 lowest frequencies, each bit = coefficient > their median, first
coefficient the most significant bit (so ``f"{h:016x}" == str(imagehash.phash(im))``).
``phashes`` computes a batch at once: the resize is per image, but the DCT is two matrix
products over the whole batch, with only the 8 rows of the DCT matrix the low frequencies
need (imagehash runs a full 32x32 FFT-based DCT per image and keeps 64 of its 1024 values).

Search. The 64 bits are cut into ``bands`` pieces (widths differ by at most one bit). If two
hashes are within Hamming distance t, their differing bits fall into ``bands`` pieces, so by
pigeonhole some band differs in at most r = floor(t / bands) bits (otherwise every band would
differ in >= r + 1 and the total would be >= bands * (r + 1) > t). Probing, for each band,
every key within Hamming radius r of the image's own key therefore finds EVERY pair within t:
banding costs no recall, unlike MinHash LSH. With r = 0 (t < bands) this is plain banding
(a shared band); the default t = 10, bands = 4 gives 16-bit bands probed at radius 2, i.e.
4 x (1 + 16 + 120) = 548 keys per image, each matching ~n / 65,536 unrelated images, where a
brute-force scan compares with all n. Candidates are then verified by the full distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import polars as pl
from PIL import Image

BITS = 64
HASH_SIZE = 8  # imagehash's defaults: an 8x8 hash from a 32x32 image (highfreq_factor 4)
IMG_SIZE = 32


def _dct_rows(n: int, k: int) -> np.ndarray:
    """The first ``k`` rows of the unnormalised DCT-II matrix of size n (scipy's type 2,
    norm=None): y[u] = 2 * sum_x f[x] cos(pi * u * (2x + 1) / (2n))."""
    u = np.arange(k)[:, None]
    x = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * u * (2 * x + 1) / (2 * n))


_D = _dct_rows(IMG_SIZE, HASH_SIZE)  # (8, 32)


def grey_thumbnail(image: Image.Image) -> np.ndarray:
    """The 32x32 grey pixels pHash is computed from (imagehash's exact preprocessing)."""
    small = image.convert("L").resize((IMG_SIZE, IMG_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.float64)


def phashes_from_thumbnails(thumbs: np.ndarray) -> np.ndarray:
    """uint64 pHash of each (32, 32) grey thumbnail in ``thumbs`` (shape (n, 32, 32))."""
    if len(thumbs) == 0:
        return np.empty(0, dtype=np.uint64)
    low = _D @ thumbs @ _D.T  # (n, 8, 8): the 2-D DCT's low frequencies
    flat = low.reshape(len(thumbs), BITS)
    bits = flat > np.median(flat, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").reshape(-1).astype(np.uint64)


def phashes(images: Sequence[Image.Image]) -> np.ndarray:
    """uint64 pHash of each image, equal to ``imagehash.phash`` as an integer."""
    if not images:
        return np.empty(0, dtype=np.uint64)
    return phashes_from_thumbnails(np.stack([grey_thumbnail(im) for im in images]))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance of uint64 hashes, elementwise (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def band_layout(bands: int) -> list[tuple[int, int]]:
    """(shift, width) of each band, most significant first; widths differ by at most 1."""
    base, extra = divmod(BITS, bands)
    widths = [base + (1 if i < extra else 0) for i in range(bands)]
    shifts = [BITS - sum(widths[: i + 1]) for i in range(bands)]
    return list(zip(shifts, widths, strict=True))


def band_keys(hashes: np.ndarray, bands: int) -> np.ndarray:
    """Each hash's key in each band, shape (n, bands), uint64."""
    h = np.asarray(hashes, dtype=np.uint64)
    cols = [(h >> np.uint64(s)) & np.uint64((1 << w) - 1) for s, w in band_layout(bands)]
    return np.stack(cols, axis=1) if cols else np.empty((h.size, 0), np.uint64)


def probe_masks(width: int, radius: int) -> np.ndarray:
    """Every ``width``-bit mask with at most ``radius`` bits set (0 first): XOR-ing a key with
    each gives all keys within Hamming ``radius`` of it."""
    masks = [0]
    for r in range(1, min(radius, width) + 1):
        masks += [sum(1 << b for b in bits) for bits in combinations(range(width), r)]
    return np.asarray(masks, dtype=np.uint64)


def bucket_frame(orders: np.ndarray, hashes: np.ndarray, bands: int) -> pl.DataFrame:
    """(band, key, other) rows: the images ``orders`` filed under their own band keys."""
    keys = band_keys(hashes, bands)
    return pl.DataFrame(
        {
            "band": np.tile(np.arange(bands, dtype=np.int16), len(orders)),
            "key": keys.reshape(-1),
            "other": np.repeat(np.asarray(orders, dtype=np.int64), bands),
        }
    )


def probe_frame(orders: np.ndarray, hashes: np.ndarray, bands: int, radius: int) -> pl.DataFrame:
    """(doc, band, key) rows: for each image, every key within ``radius`` of each of its
    band keys (what it looks up)."""
    keys = band_keys(hashes, bands)
    frames = []
    for b, (_, width) in enumerate(band_layout(bands)):
        masks = probe_masks(width, radius)
        probed = (keys[:, b : b + 1] ^ masks[None, :]).reshape(-1)
        frames.append(
            pl.DataFrame(
                {
                    "doc": np.repeat(np.asarray(orders, dtype=np.int64), masks.size),
                    "band": np.full(probed.size, b, dtype=np.int16),
                    "key": probed,
                }
            )
        )
    return pl.concat(frames)

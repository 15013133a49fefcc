"""Banded LSH over MinHash signatures: bucket keys, candidate pairs and their verification.

    python -c "from flywheel.data.dedup.lsh import *; print(s_curve(0.8, 16, 8))"

Why bands. Two documents with Jaccard similarity s agree on any one signature row with
probability s (the MinHash property), so on all r rows of a band with probability s^r, and
share at least one of b independent bands (become candidates) with probability

    P(s) = 1 - (1 - s^r)^b,

an S-curve rising from ~0 to ~1. It rises around the s where one band is expected to collide,
b * s^r = 1: there s^r = 1/b and P = 1 - (1 - 1/b)^b ~ 1 - 1/e ~ 0.63, so the similarity the
layout implies is

    s* ~ (1/b)^(1/r).

More bands move s* down (more recall, more candidates); more rows make the curve steeper and
move it up. ``DedupSettings.resolve_bands`` lets datasketch's optimizer choose (b, r) with
b * r <= num_perm, minimizing w_fp * (area under P below t) + w_fn * (area above P past t).

Equal weights put s* ABOVE t: at num_perm = 128, t = 0.8 they give b = 9, r = 13, s* ~ 0.84
and P(0.80) ~ 0.40, P(0.85) ~ 0.69: half of the pairs near the threshold never become
candidates (bench/dedup.py measured recall 0.89 that way). A false positive of LSH only costs
one verification, a false negative is a missed duplicate, so the defaults weigh them 0.05 /
0.95, which gives b = 16, r = 8: s* = 16^(-1/8) ~ 0.71 and

    P(0.5) ~ 0.06   P(0.6) ~ 0.24   P(0.7) ~ 0.61   P(0.75) ~ 0.82   P(0.8) ~ 0.947
    P(0.85) ~ 0.994   P(0.9) ~ 0.9999

(a pair at J = 0.8 is missed with probability 0.053; most such docs have several near
duplicates, each another chance). Verification (``flywheel.data.dedup.verify``) then restores the
precision: a candidate counts only if its similarity is >= t.

Which pairs. A bucket (band, key) of m documents has m(m-1)/2 pairs; a boilerplate paragraph
can put thousands of documents in one bucket. Each member is therefore compared only with the
bucket's FIRST member (the earliest document, usually the cluster's kept root) and with its
``window`` immediate predecessors. That is O(m * window) per bucket and loses nothing in the
common case: members of a bucket share r rows, so they are mostly mutual near-duplicates, and a
document typically shares several bands with its near-duplicates (b * s^r >= 1 near s*),
giving several chances to meet one. Candidates only ever point backwards (to an earlier
document), and which members are a document's predecessors depends only on earlier documents,
so deduplicating A then B gives the same pairs as deduplicating A + B at once.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from flywheel.data.dedup.minhash import fmix64

_ROW_MIX = np.uint64(0x9FB21C651E98DF25)  # odd multiplier folding signature rows into a key


def s_curve(s: float, bands: int, rows: int) -> float:
    """P(two docs of Jaccard s share at least one band) = 1 - (1 - s^r)^b."""
    return 1.0 - (1.0 - s**rows) ** bands


def implied_threshold(bands: int, rows: int) -> float:
    """The S-curve's inflection estimate (1/b)^(1/r)."""
    return (1.0 / bands) ** (1.0 / rows)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64 key of each band of each signature, shape (n_docs, bands).

    Keys fold the r uint32 rows of a band as h = (h ^ v) * M, then fmix64: equal bands give
    equal keys; unequal bands collide with probability ~2^-64, which only adds a candidate
    that verification rejects.
    """
    n = sig.shape[0]
    cols = sig[:, : bands * rows].reshape(n, bands, rows)
    h = np.zeros((n, bands), dtype=np.uint64)
    for j in range(rows):
        h ^= cols[:, :, j]
        h *= _ROW_MIX
    return fmix64(h)


def bucket_frame(orders: np.ndarray, keys: np.ndarray) -> pl.DataFrame:
    """Long (order, band, key) rows for documents ``orders`` with band keys ``keys``."""
    n, bands = keys.shape
    return pl.DataFrame(
        {
            "order": np.repeat(orders.astype(np.int64), bands),
            "band": np.tile(np.arange(bands, dtype=np.int16), n),
            "key": keys.reshape(-1),
        }
    )


def candidate_pairs(old: pl.DataFrame, new: pl.DataFrame, window: int) -> pl.DataFrame:
    """Pairs (doc, other) with doc in ``new``, other < doc sharing a bucket with it.

    ``old`` and ``new`` are bucket frames; every order in ``new`` exceeds every order in
    ``old``. Only buckets that a new document falls in are read from ``old`` (a semi join).
    """
    rows = new
    if old.height:  # only the buckets a new document falls in (a semi join keeps old rows)
        rows = pl.concat([old.join(new.select("band", "key"), on=["band", "key"], how="semi"), new])
    rows = rows.filter(_shared_buckets(rows))
    rows = rows.sort("band", "key", "order")
    first_new = new["order"].min()
    starts = (pl.col("band") != pl.col("band").shift(1)) | (pl.col("key") != pl.col("key").shift(1))
    rows = rows.with_columns(starts.fill_null(True).alias("start"))
    rows = rows.with_columns(pl.col("start").cum_sum().alias("g"))
    # the bucket's first member (rows are sorted, so it is the row that starts the bucket)
    # and up to `window` predecessors inside the same bucket
    others = [pl.when("start").then("order").forward_fill().alias("o0")]
    others += [
        pl.when(pl.col("g").shift(k) == pl.col("g")).then(pl.col("order").shift(k)).alias(f"o{k}")
        for k in range(1, window + 1)
    ]
    wide = rows.with_columns(others).filter(pl.col("order") >= first_new)
    pairs = (
        wide.unpivot(index="order", on=[f"o{k}" for k in range(window + 1)], value_name="other")
        .select(pl.col("order").alias("doc"), "other")
        .filter(pl.col("other") < pl.col("doc"))
        .unique()
    )
    return pairs


def _shared_buckets(rows: pl.DataFrame) -> pl.Series:
    """Rows whose (band, key) bucket holds more than one of ``rows``.

    Most buckets hold one document and pair nothing (on the benchmark corpus ~75% of the
    rows): dropping them before the sort and the window columns leaves the pairs unchanged.
    One hashed uint64 per row makes this a single-column duplicate check (2x cheaper than on
    two columns); a collision of two buckets' hashes (~2^-64) only keeps a few rows more."""
    band = rows["band"].to_numpy().astype(np.uint64)
    mixed = fmix64(rows["key"].to_numpy() ^ (band * _ROW_MIX))
    return pl.Series(mixed).is_duplicated()


def agreeing_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row pair, how many signature entries agree; / num_perm it estimates Jaccard."""
    return np.count_nonzero(a == b, axis=1)


def min_agreements(threshold: float, num_perm: int) -> int:
    """Smallest count of agreeing rows whose fraction is >= threshold (robust to rounding)."""
    return math.ceil(threshold * num_perm - 1e-9)

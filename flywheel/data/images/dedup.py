"""Exact and pHash near-duplicate removal of image records, with a persistent incremental index.

    python -c "from flywheel.data.images.dedup import *; help(ImageDedupIndex)"

Semantics. Records are processed in arrival order (earlier batches, then input order). A
record is REMOVED iff an earlier record has the same decoded pixels (``exact``: the same
``image_id``) or an earlier KEPT record's pHash lies within ``threshold`` bits of its own
(``phash``). Its ``duplicate_of`` is the kept record its cluster resolves to: for ``phash``
the earliest kept record within the threshold, for ``exact`` the root of the first record with
those pixels. Only kept records are searched (not removed ones, as text dedup's chains do):
a chain of small edits must not carry a cluster away from the image it started from, and this
is what the plain "compare with every kept image" loop decides, so ``bench/image_dedup.py``
checks the two give identical decisions. The candidate search finds every pair within the
threshold (``flywheel.data.images.phash``: pigeonhole over bands), so no pair is missed.

The outputs are text dedup's (``flywheel.data.dedup.results``): a ``DedupResult`` per batch,
with ``keep`` aligned to the input and ``duplicates`` rows (id, duplicate_of, method,
similarity = 1 - distance / 64, 1.0 for exact). An id already in the index gets its recorded
decision back (re-running is idempotent); a repeated id inside a batch, its first's. The
index persists like text dedup's: immutable Parquet parts plus a manifest written last
(``flywheel.data.dedup.store``), one part per ``commit``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from flywheel.core.settings.images import ImageDedupSettings
from flywheel.core.shards import atomic_write_parquet
from flywheel.data.dedup import store
from flywheel.data.dedup.results import DUPLICATES_SCHEMA, DedupResult, batch_orders
from flywheel.data.images import phash as ph

KEPT, EXACT, PHASH = 0, 1, 2
METHODS = np.array([None, "exact", "phash"], dtype=object)
HASH_SCHEME = "imagehash-phash-8x8/blake2b-128-rgb"
FINGERPRINT_FIELDS = ("hash_scheme", "bands")  # threshold may change between runs
_PROBE_BLOCK = 4096  # images probed at once: 4096 x 548 keys (defaults) = 2.2M probe rows


class ImageDedupIndex:
    """Every record seen so far: id, image id, pHash, root, method, similarity."""

    def __init__(self, settings: ImageDedupSettings | None = None, path: Path | None = None):
        self.settings = settings or ImageDedupSettings()
        self.path = None if path is None else Path(path)
        self._ids: list[str] = []
        self._order_of: dict[str, int] = {}
        self._first_exact: dict[str, int] = {}  # image id -> order of its first record
        self._image_ids: list[str] = []
        self._cols: dict[str, list[np.ndarray]] = {
            k: [] for k in ("phash", "root", "method", "sim")
        }
        self._arrays: dict[str, np.ndarray] | None = None  # _cols concatenated, cached
        self._buckets: list[pl.DataFrame] = []  # (band, key, other) of kept records
        self._committed = 0
        self._parts: list[dict[str, Any]] = []

    # -- persistence ---------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, settings: ImageDedupSettings | None = None) -> ImageDedupIndex:
        """Load the index in ``path`` (checking its hash scheme and bands match), or create an
        empty one there."""
        index = cls(settings, Path(path))
        manifest = store.read_manifest(index.path)
        if manifest is None:
            index.path.mkdir(parents=True, exist_ok=True)
            store.write_manifest(index.path, index.fingerprint(), [])
            return index
        for key in FINGERPRINT_FIELDS:
            if manifest.get(key) != index.fingerprint()[key]:
                raise ValueError(
                    f"image dedup index {index.path} is incompatible with these settings: "
                    f"{key}={manifest.get(key)!r} in the index, {index.fingerprint()[key]!r} "
                    "in the settings; use the index's settings or a new index directory"
                )
        for entry in manifest["parts"]:
            frame = pl.read_parquet(index.path / entry["file"])
            if frame.height != entry["rows"]:
                raise ValueError(f"image dedup index part {entry['file']} is not complete")
            index._append(frame["id"].to_list(), frame["image_id"].to_list(), _columns(frame))
        index._parts, index._committed = list(manifest["parts"]), len(index)
        return index

    def fingerprint(self) -> dict[str, Any]:
        return {"hash_scheme": HASH_SCHEME, "bands": self.settings.bands}

    def commit(self) -> None:
        """Persist the records added since the last commit: a part file, then the manifest
        naming it (so a crash in between leaves the previous index)."""
        if self.path is None or self._committed == len(self):
            return
        c, a = self._committed, self._all()
        frame = pl.DataFrame(
            {
                "id": pl.Series(self._ids[c:], dtype=pl.String),
                "image_id": pl.Series(self._image_ids[c:], dtype=pl.String),
                "phash": pl.Series(a["phash"][c:], dtype=pl.UInt64),
                "root": pl.Series(a["root"][c:], dtype=pl.Int64),
                "method": pl.Series(a["method"][c:], dtype=pl.Int8),
                "similarity": pl.Series(a["sim"][c:], dtype=pl.Float64),
            }
        )
        name = f"part-{len(self._parts):05d}-{time.time_ns() % 16**8:08x}.parquet"
        atomic_write_parquet(frame, self.path / name)
        parts = [*self._parts, {"file": name, "rows": frame.height}]
        store.write_manifest(self.path, self.fingerprint(), parts)
        self._parts, self._committed = parts, len(self)
        store.remove_orphans(self.path, parts)

    def __len__(self) -> int:
        return len(self._ids)

    def _all(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            empty = {"phash": np.uint64, "root": np.int64, "method": np.int8, "sim": np.float64}
            self._arrays = {
                k: np.concatenate(v) if v else np.empty(0, empty[k]) for k, v in self._cols.items()
            }
            self._cols = {k: [v] for k, v in self._arrays.items()}
        return self._arrays

    def _append(self, ids: list[str], image_ids: list[str], cols: dict[str, np.ndarray]) -> None:
        n0 = len(self._ids)
        for k, v in cols.items():
            self._cols[k].append(v)
        self._arrays = None
        self._ids.extend(ids)
        self._image_ids.extend(image_ids)
        self._order_of.update(zip(ids, range(n0, n0 + len(ids)), strict=True))
        for j, image_id in enumerate(image_ids):
            self._first_exact.setdefault(image_id, n0 + j)
        kept = np.flatnonzero(cols["method"] == KEPT)
        self._buckets.append(ph.bucket_frame(n0 + kept, cols["phash"][kept], self.settings.bands))

    # -- deduplication -------------------------------------------------------------------
    def add(
        self, ids: Sequence[Any], image_ids: Sequence[str], phashes: Sequence[int] | np.ndarray
    ) -> DedupResult:
        """Deduplicate a batch of records (their ids, image ids and pHashes) against the
        index and itself; new records join the index."""
        started = time.perf_counter()
        ids = [i if isinstance(i, str) else str(i) for i in ids]
        image_ids = list(image_ids)
        hashes = np.asarray(phashes, dtype=np.uint64)
        if not len(ids) == len(image_ids) == hashes.size:
            raise ValueError(f"{len(ids)} ids, {len(image_ids)} image ids, {hashes.size} phashes")
        n0 = len(self)
        orders, fresh, new_pos = batch_orders(ids, self._order_of, n0)
        new_image_ids = [image_ids[p] for p in new_pos]
        cols, stats = self._process(new_image_ids, hashes[new_pos], n0)
        self._append(list(fresh), new_image_ids, cols)
        result = self._result(ids, orders)
        result.stats.update(stats, new_docs=len(new_pos))
        result.stats["seconds"] = round(time.perf_counter() - started, 6)
        return result

    def _process(self, image_ids: list[str], hashes: np.ndarray, n0: int):
        """Decide every new record (orders n0, n0 + 1, ...): the columns to append."""
        s, m = self.settings, len(image_ids)
        parent = np.full(m, -1, dtype=np.int64)
        method = np.zeros(m, dtype=np.int8)
        sim = np.zeros(m, dtype=np.float64)
        if s.exact:
            seen: dict[str, int] = {}
            for j, image_id in enumerate(image_ids):
                first = self._first_exact.get(image_id, seen.get(image_id))
                if first is None:
                    seen[image_id] = n0 + j
                else:
                    parent[j], method[j], sim[j] = first, EXACT, 1.0
        stats = {"candidate_pairs": 0, "verified_pairs": 0}
        if s.phash and m:
            stats = self._near_duplicates(hashes, n0, parent, method, sim)
        root = np.arange(n0, n0 + m, dtype=np.int64)
        old_root = self._all()["root"]
        for j in np.flatnonzero(parent >= 0):  # parents are earlier: one pass resolves chains
            p = parent[j]
            root[j] = old_root[p] if p < n0 else root[p - n0]
        return {"phash": hashes, "root": root, "method": method, "sim": sim}, stats

    def _near_duplicates(self, hashes, n0: int, parent, method, sim) -> dict[str, int]:
        """Find, for each new record not already an exact copy, the earliest KEPT record
        within the threshold (old kept records, or earlier new ones decided kept)."""
        s = self.settings
        fresh = np.flatnonzero(method == KEPT)
        new = ph.bucket_frame(n0 + fresh, hashes[fresh], s.bands)
        if len(self._buckets) > 1:  # no O(index) copy per batch: compact when chunks pile up
            table = pl.concat(self._buckets, rechunk=False)
            self._buckets = [table.rechunk() if table.n_chunks() > 32 else table]
        table = pl.concat([*self._buckets, new], rechunk=False)
        all_hashes = np.concatenate([self._all()["phash"], hashes])
        pairs = []
        for b in range(0, fresh.size, _PROBE_BLOCK):
            block = fresh[b : b + _PROBE_BLOCK]
            probes = ph.probe_frame(n0 + block, hashes[block], s.bands, s.radius)
            found = probes.join(table, on=["band", "key"]).filter(pl.col("other") < pl.col("doc"))
            pairs.append(found.select("doc", "other").unique())
        cand = (
            pl.concat(pairs) if pairs else pl.DataFrame(schema={"doc": pl.Int64, "other": pl.Int64})
        )
        doc, other = cand["doc"].to_numpy(), cand["other"].to_numpy()
        dist = ph.hamming(all_hashes[doc], all_hashes[other])
        ok = dist <= s.threshold
        verified = pl.DataFrame({"doc": doc[ok], "other": other[ok], "dist": dist[ok]})
        # in arrival order: a new candidate counts only if it was itself decided kept
        for d, others, dists in (
            verified.sort("doc", "other")
            .group_by("doc", maintain_order=True)
            .agg("other", "dist")
            .iter_rows()
        ):
            for o, dd in zip(others, dists, strict=True):
                if o < n0 or parent[o - n0] < 0:
                    j = d - n0
                    parent[j], method[j], sim[j] = o, PHASH, 1.0 - dd / ph.BITS
                    break
        return {"candidate_pairs": int(doc.size), "verified_pairs": int(ok.sum())}

    def _result(self, ids: list[str], orders: np.ndarray) -> DedupResult:
        a = self._all()
        root = a["root"][orders]
        keep = root == orders
        gone = np.flatnonzero(~keep)
        method = a["method"][orders[gone]]
        duplicates = pl.DataFrame(
            {
                "id": [ids[p] for p in gone],
                "duplicate_of": [self._ids[r] for r in root[gone]],
                "method": METHODS[method].tolist(),
                "similarity": a["sim"][orders[gone]],
            },
            schema=DUPLICATES_SCHEMA,
        )
        stats = {
            "docs": len(ids),
            "kept": int(keep.sum()),
            "removed": int(gone.size),
            "exact_removed": int((method == EXACT).sum()),
            "phash_removed": int((method == PHASH).sum()),
        }
        return DedupResult(keep=keep, duplicates=duplicates, stats=stats)


def _columns(frame: pl.DataFrame) -> dict[str, np.ndarray]:
    return {
        "phash": frame["phash"].to_numpy().astype(np.uint64),
        "root": frame["root"].to_numpy().astype(np.int64),
        "method": frame["method"].to_numpy().astype(np.int8),
        "sim": frame["similarity"].to_numpy().astype(np.float64),
    }


def deduplicate_images(
    ids: Sequence[Any],
    image_ids: Sequence[str],
    phashes: Sequence[int] | np.ndarray,
    settings: ImageDedupSettings | None = None,
) -> DedupResult:
    """Deduplicate one set of image records in memory (no index directory)."""
    return ImageDedupIndex(settings).add(ids, image_ids, phashes)

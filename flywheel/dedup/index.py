"""The incremental dedup index: exact + MinHash LSH deduplication against everything seen.

    python -c "from flywheel.dedup import deduplicate; print(deduplicate([1, 2], ['a b', 'a b']))"

Semantics. Documents are processed in arrival order (earlier batches, then input order). A
document is REMOVED iff it has an earlier document with the same normalized text (``exact``)
or a verified near-duplicate among the earlier documents its LSH buckets pair it with
(``minhash``, see ``flywheel.dedup.lsh``). Its parent is the earliest such document, and its
``duplicate_of`` is its parent's root: the KEPT document the chain of parents ends at. Exact
duplicates are found first and never enter LSH buckets (their signature equals their
original's, so they could only add redundant pairs). Empty texts (no words) have no shingles
and never match by MinHash; by exact hash they are duplicates of the first empty text.

An id already in the index is not processed again: it gets its recorded decision back, so
re-running a corpus is idempotent. A repeated id inside one batch gets its first occurrence's
decision. Nothing old is recomputed: old documents contribute their stored signatures, exact
hashes and (recomputed from signatures) bucket keys.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from flywheel.dedup import lsh, store
from flywheel.dedup.minhash import HASH_SCHEME, MinHasher
from flywheel.dedup.settings import DedupSettings

DUPLICATES_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "duplicate_of": pl.String(),  # the kept document the removed one's cluster resolves to
    "method": pl.String(),  # "exact" | "minhash"
    "similarity": pl.Float64(),  # estimated Jaccard with its parent; 1.0 for exact
}
KEPT, EXACT, MINHASH = 0, 1, 2
_PAIR_BLOCK = 65_536  # candidate pairs verified at once: 2 x 65536 x 128 x 4 B = 64 MiB
_METHOD_NAMES = np.array([None, "exact", "minhash"], dtype=object)


@dataclass
class DedupResult:
    """The decisions for one ``add``: ``keep`` is aligned with its input."""

    keep: np.ndarray
    duplicates: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=DUPLICATES_SCHEMA))
    stats: dict[str, Any] = field(default_factory=dict)


class _Column:
    """An append-only numpy column with amortized O(1) appends (capacity doubling)."""

    def __init__(self, dtype: Any, width: int | None = None) -> None:
        self._shape = () if width is None else (width,)
        self._data = np.empty((1024, *self._shape), dtype=dtype)
        self.n = 0

    def append(self, values: np.ndarray) -> None:
        need = self.n + len(values)
        if need > len(self._data):
            grown = np.empty((max(need, 2 * len(self._data)), *self._shape), self._data.dtype)
            grown[: self.n] = self._data[: self.n]
            self._data = grown
        self._data[self.n : need] = values
        self.n = need

    @property
    def values(self) -> np.ndarray:
        return self._data[: self.n]


class DedupIndex:
    """Every document seen so far: id, root, method, similarity, exact hash, signature."""

    def __init__(self, settings: DedupSettings | None = None, path: Path | None = None) -> None:
        self.settings = settings or DedupSettings()
        self.path = None if path is None else Path(path)
        s = self.settings
        self.bands, self.rows = s.resolve_bands()
        self.hasher = MinHasher(s.num_perm, s.ngram, s.lowercase, s.seed)
        self._ids: list[str] = []
        self._order_of: dict[str, int] = {}
        self._first_exact: dict[int, int] = {}  # exact hash -> order of its first document
        self._cols = {
            "root": _Column(np.int64),
            "method": _Column(np.int8),
            "similarity": _Column(np.float64),
            "exact": _Column(np.uint64),
            "lsh": _Column(np.bool_),
            "sig": _Column(np.uint32, s.num_perm),
        }
        self._buckets: list[pl.DataFrame] = []  # (order, band, key) of lsh docs < _bucketed
        self._bucketed = 0
        self._committed = 0
        self._parts: list[dict[str, Any]] = []

    # -- persistence ---------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, settings: DedupSettings | None = None) -> DedupIndex:
        """Load the index in ``path`` (checking it was built with compatible settings), or
        create an empty one there."""
        index = cls(settings, Path(path))
        manifest = store.read_manifest(index.path)
        if manifest is None:
            index.path.mkdir(parents=True, exist_ok=True)
            store.write_manifest(index.path, index.fingerprint(), [])
            return index
        store.check_fingerprint(index.path, manifest, index.fingerprint())
        for entry in manifest["parts"]:
            part = store.read_part(index.path, entry, index.settings.num_perm)
            index._append(part["id"], {k: v for k, v in part.items() if k != "id"})
        index._parts = list(manifest["parts"])
        index._committed = len(index)
        return index

    def fingerprint(self) -> dict[str, Any]:
        s = self.settings
        return {"hash_scheme": HASH_SCHEME, "num_perm": s.num_perm, "ngram": s.ngram,
                "lowercase": s.lowercase, "seed": s.seed, "bands": self.bands, "rows": self.rows}

    def commit(self) -> None:
        """Persist the documents added since the last commit (no-op in memory): a new part
        file, then the manifest naming it. Until the manifest is replaced, readers and a
        crashed writer's successor see the previous index."""
        if self.path is None or self._committed == len(self):
            return
        c = self._committed
        columns = {k: col.values[c:] for k, col in self._cols.items()}
        entry = store.write_part(self.path, len(self._parts), {"id": self._ids[c:], **columns})
        parts = [*self._parts, entry]
        store.write_manifest(self.path, self.fingerprint(), parts)
        self._parts, self._committed = parts, len(self)
        store.remove_orphans(self.path, parts)

    def __len__(self) -> int:
        return len(self._ids)

    def _append(self, ids: list[str], columns: dict[str, np.ndarray]) -> None:
        n0 = len(self._ids)
        for k, col in self._cols.items():
            col.append(columns[k])
        self._ids.extend(ids)
        self._order_of.update(zip(ids, range(n0, n0 + len(ids)), strict=True))
        for j, h in enumerate(columns["exact"].tolist()):
            self._first_exact.setdefault(h, n0 + j)

    # -- deduplication -------------------------------------------------------------------
    def add(self, ids: Sequence[Any], texts: Sequence[str]) -> DedupResult:
        """Deduplicate a batch against the index and itself; new documents join the index."""
        started = time.perf_counter()
        ids = _as_strings(ids)
        texts = list(texts)
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
        n0 = len(self)
        orders = np.empty(len(ids), dtype=np.int64)
        fresh: dict[str, int] = {}  # ids new to the index -> their order
        for p, i in enumerate(ids):
            o = self._order_of.get(i)
            if o is None:
                o = fresh.setdefault(i, n0 + len(fresh))
            orders[p] = o
        new_pos = np.flatnonzero(orders >= n0)
        new_pos = new_pos[np.unique(orders[new_pos], return_index=True)[1]]
        columns, stats = self._process([texts[p] for p in new_pos], n0)
        self._append(list(fresh), columns)
        result = self._result(ids, orders)
        mb = sum(len(texts[p].encode("utf-8", "surrogatepass")) for p in new_pos) / 1e6
        result.stats.update(stats, new_docs=len(new_pos), mb=round(mb, 6),
                            seconds=round(time.perf_counter() - started, 6))
        return result

    def _process(self, texts: list[str], n0: int) -> tuple[dict[str, np.ndarray], dict]:
        """Decide every new document (orders n0, n0 + 1, ...): the columns to append."""
        s, m = self.settings, len(texts)
        norms = self.hasher.normalize(texts)
        exact = self.hasher.exact_hashes(norms)
        parent = np.full(m, -1, dtype=np.int64)
        method = np.zeros(m, dtype=np.int8)
        similarity = np.zeros(m, dtype=np.float64)
        if s.exact:
            seen: dict[int, int] = {}
            for j, h in enumerate(exact.tolist()):
                first = self._first_exact.get(h, seen.get(h))
                if first is None:
                    seen[h] = n0 + j
                else:
                    parent[j], method[j], similarity[j] = first, EXACT, 1.0
        fresh = method != EXACT
        started = time.perf_counter()
        sig = np.empty((m, s.num_perm), dtype=np.uint32)
        sig[fresh] = self.hasher.signatures_normalized([norms[j] for j in np.flatnonzero(fresh)])
        sig_seconds = time.perf_counter() - started
        for j in np.flatnonzero(~fresh):  # an exact copy has its original's signature
            p = parent[j]
            sig[j] = self._cols["sig"].values[p] if p < n0 else sig[p - n0]
        in_lsh = fresh & np.fromiter((bool(t) for t in norms), dtype=np.bool_, count=m)
        stats = {"signature_seconds": round(sig_seconds, 6), "candidate_pairs": 0,
                 "verified_pairs": 0, "bands": self.bands, "rows": self.rows}
        if s.minhash and in_lsh.any():
            stats.update(self._near_duplicates(sig, in_lsh, n0, parent, method, similarity))
        root = np.arange(n0, n0 + m, dtype=np.int64)
        old_root = self._cols["root"].values
        for j in np.flatnonzero(parent >= 0):  # parents come first, so are already resolved
            p = parent[j]
            root[j] = old_root[p] if p < n0 else root[p - n0]
        columns = {"root": root, "method": method, "similarity": similarity, "exact": exact,
                   "lsh": in_lsh, "sig": sig}
        return columns, stats

    def _near_duplicates(self, sig, in_lsh, n0, parent, method, similarity) -> dict[str, int]:
        """LSH candidates of the new docs in ``in_lsh``, verified; fills parent/method/sim."""
        keys = lsh.band_keys(sig[in_lsh], self.bands, self.rows)
        new = lsh.bucket_frame(n0 + np.flatnonzero(in_lsh), keys)
        pairs = lsh.candidate_pairs(self._bucket_table(n0), new, self.settings.bucket_window)
        doc, other = pairs["doc"].to_numpy(), pairs["other"].to_numpy()
        agree = np.empty(doc.size, dtype=np.int64)
        for b in range(0, doc.size, _PAIR_BLOCK):
            rows_a = self._signature_rows(sig, n0, doc[b : b + _PAIR_BLOCK])
            rows_b = self._signature_rows(sig, n0, other[b : b + _PAIR_BLOCK])
            agree[b : b + _PAIR_BLOCK] = lsh.agreeing_rows(rows_a, rows_b)
        need = lsh.min_agreements(self.settings.threshold, self.settings.num_perm)
        ok = agree >= need if self.settings.verify else np.ones(doc.size, dtype=np.bool_)
        # each doc's parent: its earliest verified candidate
        best = (
            pl.DataFrame({"doc": doc[ok], "other": other[ok], "agree": agree[ok]})
            .sort("doc", "other")
            .unique("doc", keep="first")
        )
        j = best["doc"].to_numpy() - n0
        parent[j] = best["other"].to_numpy()
        method[j] = MINHASH
        similarity[j] = best["agree"].to_numpy() / self.settings.num_perm
        self._buckets.append(new)
        self._bucketed = n0 + len(sig)
        return {"candidate_pairs": int(doc.size), "verified_pairs": int(ok.sum())}

    def _signature_rows(self, sig: np.ndarray, n0: int, orders: np.ndarray) -> np.ndarray:
        """Signatures of documents by order: old ones from the index, new ones from ``sig``."""
        out = np.empty((orders.size, sig.shape[1]), dtype=np.uint32)
        old = orders < n0
        out[old] = self._cols["sig"].values[orders[old]]
        out[~old] = sig[orders[~old] - n0]
        return out

    def _bucket_table(self, n0: int) -> pl.DataFrame:
        """(order, band, key) of every indexed LSH document; keys of documents loaded from
        disk (or added with minhash off) are computed once from their stored signatures."""
        if self._bucketed < n0:
            lo = self._bucketed
            docs = lo + np.flatnonzero(self._cols["lsh"].values[lo:n0])
            keys = lsh.band_keys(self._cols["sig"].values[docs], self.bands, self.rows)
            self._buckets.append(lsh.bucket_frame(docs, keys))
            self._bucketed = n0
        if len(self._buckets) > 1:
            self._buckets = [pl.concat(self._buckets, rechunk=False)]  # no O(index) copy
        if not self._buckets:
            return pl.DataFrame(schema={"order": pl.Int64, "band": pl.Int16, "key": pl.UInt64})
        return self._buckets[0]

    def _result(self, ids: list[str], orders: np.ndarray) -> DedupResult:
        root = self._cols["root"].values[orders]
        keep = root == orders
        gone = np.flatnonzero(~keep)
        method = self._cols["method"].values[orders[gone]]
        duplicates = pl.DataFrame(
            {
                "id": [ids[p] for p in gone],
                "duplicate_of": [self._ids[r] for r in root[gone]],
                "method": _METHOD_NAMES[method].tolist(),
                "similarity": self._cols["similarity"].values[orders[gone]],
            },
            schema=DUPLICATES_SCHEMA,
        )
        stats = {"docs": len(ids), "kept": int(keep.sum()), "removed": int(gone.size),
                 "exact_removed": int((method == EXACT).sum()),
                 "minhash_removed": int((method == MINHASH).sum())}
        return DedupResult(keep=keep, duplicates=duplicates, stats=stats)


def _as_strings(ids: Sequence[Any]) -> list[str]:
    """Ids as strings (str(1) == "1"), the one type the index stores."""
    if isinstance(ids, pl.Series):
        return ids.cast(pl.String).to_list()
    return [i if isinstance(i, str) else str(i) for i in ids]


def deduplicate(
    ids: Sequence[Any], texts: Sequence[str], settings: DedupSettings | None = None
) -> DedupResult:
    """Deduplicate one corpus in memory (no index directory)."""
    return DedupIndex(settings).add(ids, texts)

"""The incremental dedup index: exact + MinHash LSH deduplication against everything seen.

    python -c "from flywheel.data.dedup import deduplicate as d; print(d([1, 2], ['a b', 'a b']))"

Semantics. Documents are processed in arrival order (earlier batches, then input order). A
document is REMOVED iff it has an earlier document with the same normalized text (``exact``)
or a verified near-duplicate among the earlier documents its LSH buckets pair it with
(``minhash``, see ``flywheel.data.dedup.lsh``). Its parent is the earliest such document, and its
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
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from flywheel.core.settings.dedup import DedupSettings
from flywheel.data.dedup import lsh, partitions, store, textbytes, verify
from flywheel.data.dedup.minhash import HASH_SCHEME, MinHasher
from flywheel.data.dedup.results import (
    EXACT,
    MINHASH,
    DedupResult,
    _as_strings,
    batch_orders,
    batch_result,
    with_batch_stats,
)

_PAIR_BLOCK = 65_536  # candidate pairs verified at once: 2 x 65536 x 128 x 4 B = 64 MiB
_SKETCH_BLOCK = 4096  # pairs per sketch verification: <= 4096 x 2 x 512 keys = 32 MiB


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
        self.hasher = MinHasher(s.num_perm, s.ngram, s.lowercase, s.seed, s.sketch_size)
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
            "sk_len": _Column(np.int64),  # bottom-m sketch length (0: none stored)
            "sk_off": _Column(np.int64),  # where it starts in _sketches
        }
        self._sketches = _Column(np.uint32)  # every sketch, concatenated in order
        self._buckets: list[pl.DataFrame] = []  # (order, band, key) of lsh docs < _bucketed
        self._bucketed = 0
        self._committed = 0
        self._parts: list[dict[str, Any]] = []
        self.partitions = s.index_partitions  # of the lookup files, fixed once the index is made

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
        partitions.check_count(index.path, manifest, index.partitions)
        for entry in manifest["parts"]:
            part = store.read_part(index.path, entry, index.settings.num_perm)
            index._append(part["id"], {k: v for k, v in part.items() if k != "id"})
        index._parts = list(manifest["parts"])
        index._committed = len(index)
        return index

    def fingerprint(self) -> dict[str, Any]:
        s = self.settings
        return {
            "hash_scheme": HASH_SCHEME,
            "num_perm": s.num_perm,
            "ngram": s.ngram,
            "lowercase": s.lowercase,
            "seed": s.seed,
            "bands": self.bands,
            "rows": self.rows,
            "sketch_size": s.sketch_size,
            "partitions": self.partitions,
        }

    def commit(self) -> None:
        """Persist the documents added since the last commit (no-op in memory): a new part
        file and its lookup partitions (so the Ray engine can continue the index), then the
        manifest naming them. Until the manifest is replaced, readers and a crashed writer's
        successor see the previous index."""
        if self.path is None or self._committed == len(self):
            return
        c = self._committed
        columns = {k: col.values[c:] for k, col in self._cols.items() if k != "sk_off"}
        columns["sk_values"] = self._sketches.values[self._cols["sk_off"].values[c] :]
        columns["id"] = self._ids[c:]
        entry = store.write_part(self.path, len(self._parts), columns)
        layout = (self.bands, self.rows, self.partitions)
        entry = partitions.write(self.path, entry, c, columns, layout)
        fingerprint = self.fingerprint()
        parts = [*partitions.backfill(self.path, {**fingerprint, "parts": self._parts}), entry]
        parts = partitions.compact(self.path, parts, self.settings.compact_files)
        store.write_manifest(self.path, fingerprint, parts)
        self._parts, self._committed = parts, len(self)
        store.remove_orphans(self.path, parts)
        partitions.remove_orphans(self.path, parts)

    def __len__(self) -> int:
        return len(self._ids)

    def _append(self, ids: list[str], columns: dict[str, np.ndarray]) -> None:
        n0 = len(self._ids)
        lengths = columns["sk_len"]
        columns["sk_off"] = self._sketches.n + np.cumsum(lengths) - lengths
        self._sketches.append(columns["sk_values"])
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
        orders, fresh, new_pos = batch_orders(ids, self._order_of, n0)
        columns, stats = self._process([texts[p] for p in new_pos], n0)
        self._append(list(fresh), columns)
        result = self._result(ids, orders)
        return with_batch_stats(result, stats, texts, new_pos, started)

    def _process(self, texts: list[str], n0: int) -> tuple[dict[str, np.ndarray], dict]:
        """Decide every new document (orders n0, n0 + 1, ...): the columns to append."""
        s, m = self.settings, len(texts)
        nz = self.hasher.normalized(texts)  # the normalized texts as one byte buffer
        exact = textbytes.exact_hashes(nz)
        parent = np.full(m, -1, dtype=np.int64)
        method = np.zeros(m, dtype=np.int8)
        similarity = np.zeros(m, dtype=np.float64)
        if s.exact:
            self._exact_parents(exact, n0, parent, method, similarity)
        fresh = method != EXACT
        started = time.perf_counter()
        sk = self.hasher.sketches_of(nz.take(np.flatnonzero(fresh)))
        sig_seconds = time.perf_counter() - started
        sig = np.empty((m, s.num_perm), dtype=np.uint32)
        sig[fresh] = sk.sig
        # an exact copy keeps no sketch: it never enters LSH buckets, so is never verified
        sk_len = np.zeros(m, dtype=np.int64)
        sk_len[fresh] = sk.lengths
        for j in np.flatnonzero(~fresh):  # an exact copy has its original's signature
            p = parent[j]
            sig[j] = self._cols["sig"].values[p] if p < n0 else sig[p - n0]
        in_lsh = fresh & (nz.n_words > 0)
        stats = {
            "signature_seconds": round(sig_seconds, 6),
            "candidate_pairs": 0,
            "verified_pairs": 0,
            "bands": self.bands,
            "rows": self.rows,
        }
        if s.minhash and in_lsh.any():
            new = (sig, sk.values, np.cumsum(sk_len) - sk_len, sk_len)
            stats.update(self._near_duplicates(new, in_lsh, n0, parent, method, similarity))
        columns = {
            "root": self._roots(parent, n0),
            "method": method,
            "similarity": similarity,
            "exact": exact,
            "lsh": in_lsh,
            "sig": sig,
            "sk_len": sk_len,
            "sk_values": sk.values,
        }
        return columns, stats

    def _exact_parents(self, exact, n0: int, parent, method, similarity) -> None:
        """Mark each new doc whose normalized-text hash was seen before (in the index or
        earlier in the batch) as an exact duplicate of the first doc with that hash."""
        seen: dict[int, int] = {}
        for j, h in enumerate(exact.tolist()):
            first = self._first_exact.get(h, seen.get(h))
            if first is None:
                seen[h] = n0 + j
            else:
                parent[j], method[j], similarity[j] = first, EXACT, 1.0

    def _roots(self, parent: np.ndarray, n0: int) -> np.ndarray:
        """Each new doc's root: itself if kept, else its parent's root (a parent is always
        earlier, so one pass in order resolves every chain)."""
        root = np.arange(n0, n0 + parent.size, dtype=np.int64)
        old_root = self._cols["root"].values
        for j in np.flatnonzero(parent >= 0):
            p = parent[j]
            root[j] = old_root[p] if p < n0 else root[p - n0]
        return root

    def _near_duplicates(self, new, in_lsh, n0, parent, method, similarity) -> dict[str, int]:
        """LSH candidates of the new docs in ``in_lsh``, verified; fills parent/method/sim.
        ``new`` is (signatures, sketch values, sketch offsets, sketch lengths) of the batch."""
        sig = new[0]
        keys = lsh.band_keys(sig[in_lsh], self.bands, self.rows)
        frame = lsh.bucket_frame(n0 + np.flatnonzero(in_lsh), keys)
        pairs = lsh.candidate_pairs(self._bucket_table(n0), frame, self.settings.bucket_window)
        doc, other = pairs["doc"].to_numpy(), pairs["other"].to_numpy()
        sim, ok = self._verify(new, n0, doc, other)
        # each doc's parent: its earliest verified candidate
        best = (
            pl.DataFrame({"doc": doc[ok], "other": other[ok], "sim": sim[ok]})
            .sort("doc", "other")
            .unique("doc", keep="first")
        )
        j = best["doc"].to_numpy() - n0
        parent[j] = best["other"].to_numpy()
        method[j] = MINHASH
        similarity[j] = best["sim"].to_numpy()
        self._buckets.append(frame)
        self._bucketed = n0 + len(sig)
        return {"candidate_pairs": int(doc.size), "verified_pairs": int(ok.sum())}

    def _verify(self, new, n0: int, doc: np.ndarray, other: np.ndarray):
        """(similarity, accepted) of candidate pairs, per ``settings.verify``."""
        s = self.settings
        agree = np.empty(doc.size, dtype=np.int64)
        for b in range(0, doc.size, _PAIR_BLOCK):
            rows_a = self._signature_rows(new[0], n0, doc[b : b + _PAIR_BLOCK])
            rows_b = self._signature_rows(new[0], n0, other[b : b + _PAIR_BLOCK])
            agree[b : b + _PAIR_BLOCK] = lsh.agreeing_rows(rows_a, rows_b)

        def sketch_sims(u: np.ndarray) -> np.ndarray:
            a_side = self._sketch_rows(new, n0, doc[u])
            b_side = self._sketch_rows(new, n0, other[u])
            return verify.sketch_jaccard(a_side, b_side, s.sketch_size)

        return verify.decide(agree, s.num_perm, s.threshold, s.verify, sketch_sims, _SKETCH_BLOCK)

    def _sketch_rows(self, new, n0: int, orders: np.ndarray):
        """(values, lengths) of the sketches of documents ``orders`` (old or new), in order."""
        old = orders < n0
        parts = []
        if old.any():
            col = self._cols
            parts.append(
                verify.ragged_take(
                    self._sketches.values, col["sk_off"].values, col["sk_len"].values, orders[old]
                )
            )
        if (~old).any():
            parts.append(verify.ragged_take(new[1], new[2], new[3], orders[~old] - n0))
        if len(parts) == 1:
            return parts[0]
        # restore the input order: sort the (old, new) concatenation by position
        position = np.concatenate([np.flatnonzero(old), np.flatnonzero(~old)])
        values = np.concatenate([parts[0][0], parts[1][0]])
        lengths = np.concatenate([parts[0][1], parts[1][1]])
        inv = np.argsort(position, kind="stable")
        starts = np.cumsum(lengths) - lengths
        return verify.ragged_take(values, starts, lengths, inv)

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
            # no O(index) copy per batch; compact once the chunks pile up (amortized O(1))
            table = pl.concat(self._buckets, rechunk=False)
            self._buckets = [table.rechunk() if table.n_chunks() > 32 else table]
        if not self._buckets:
            return pl.DataFrame(schema={"order": pl.Int64, "band": pl.Int16, "key": pl.UInt64})
        return self._buckets[0]

    def _result(self, ids: list[str], orders: np.ndarray) -> DedupResult:
        root = self._cols["root"].values[orders]
        keep = root == orders
        gone = np.flatnonzero(~keep)
        return batch_result(
            ids,
            keep,
            [self._ids[r] for r in root[gone]],
            self._cols["method"].values[orders[gone]],
            self._cols["similarity"].values[orders[gone]],
        )


def deduplicate(
    ids: Sequence[Any], texts: Sequence[str], settings: DedupSettings | None = None
) -> DedupResult:
    """Deduplicate one corpus in memory (no index directory)."""
    return DedupIndex(settings).add(ids, texts)

"""What each task of the distributed dedup computes: one map over a block of documents, or one
hash partition of a shuffle. Pure pyarrow/numpy/polars, no Ray, so each step is testable alone.

    python -c "from flywheel.data.dedup.distributed import ROW; print(ROW)"

Every step reads and writes tables of the one schema ``ROW`` (columns a step does not use are
null), so that two step outputs can be concatenated and shuffled together: that is how a join
is done without a join operator. The rows of both sides carry the same ``key``; the shuffle puts
each key's rows in one partition (key mod partitions, ``task_steps.split``), and the step
matches them there. ``tag`` says which side a row is on: ``DATA`` rows describe document
``pos``, ``QUERY`` rows ask about document ``key``.

The decisions are the local engine's (``flywheel.data.dedup.index``), step by step: the first
occurrence of an id is the one processed; a document's exact parent is the earliest document
with its exact hash; its LSH candidates come from ``lsh.candidate_pairs`` over each bucket
(every member of a bucket lands in the same partition); candidates are judged by
``verify.decide``; a document's near-duplicate parent is its earliest verified candidate; its
root is found by pointer jumping (each round, every pointer moves to its target's pointer, so a
chain of length L is resolved in log2(L) + 1 rounds; no process ever holds all edges).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.core.settings.dedup import DedupSettings
from flywheel.data.dedup import lsh, textbytes, verify
from flywheel.data.dedup.minhash import MinHasher, exact_hash

DATA, QUERY = 0, 1
KEPT, EXACT, MINHASH = 0, 1, 2  # as flywheel.data.dedup.index
ROW = pa.schema(
    [
        ("pos", pa.int64()),  # arrival position of the document the row is about
        ("key", pa.int64()),  # what the next shuffle groups by (uint64 hashes as int64 bits)
        ("tag", pa.int8()),  # DATA or QUERY; in pointer jumping: 1 if the pointer moved
        ("other", pa.int64()),  # a candidate, a parent or a pointer (-1: none)
        ("band", pa.int16()),  # the LSH band of a bucket row
        ("method", pa.int8()),  # KEPT, EXACT or MINHASH
        ("sim", pa.float64()),  # similarity with the parent
        ("id", pa.string()),
        ("dup_of", pa.string()),  # the id of the root the pointer reached
        ("exact", pa.int64()),  # exact hash of the normalized text
        ("full", pa.bool_()),  # has words (only such documents enter LSH buckets)
        ("sig", pa.large_binary()),  # MinHash signature, num_perm uint32
        ("sketch", pa.large_binary()),  # bottom-m sketch, uint32 values
    ]
)


def rows(n: int, **columns: object) -> pa.Table:
    """A ``ROW`` table of ``n`` rows: the given columns, the others null."""
    arrays = []
    for field in ROW:
        value = columns.get(field.name)
        if value is None:
            arrays.append(pa.nulls(n, field.type))
        elif isinstance(value, pa.Array | pa.ChunkedArray):
            arrays.append(value.cast(field.type))
        else:
            arrays.append(pa.array(value, field.type))
    return pa.Table.from_arrays(arrays, schema=ROW)


def col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


def side(table: pa.Table, tag: int) -> pa.Table:
    return table.filter(pc.equal(table.column("tag"), tag))


def uint32s(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, lengths) of a large_binary column of packed uint32s; null rows are empty."""
    arr = column
    if isinstance(column, pa.ChunkedArray):  # one chunk (a block's own column): no copy
        arr = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    raw = np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
    values = raw[offsets[0] : offsets[-1]].view(np.uint32)
    return values, np.diff(offsets) // 4


def packed(values: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Inverse of ``uint32s``: row r holds the next lengths[r] values."""
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths * 4, out=offsets[1:])
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(values.astype(np.uint32).tobytes())]
    return pa.Array.from_buffers(pa.large_binary(), lengths.size, buffers)


def signatures(table: pa.Table, settings: DedupSettings) -> pa.Table:
    """Map over input blocks (pos, id, text): exact hash, signature and sketch of each
    document; ``key`` is a hash of the id, for the shuffle that finds first occurrences."""
    s = settings
    hasher = MinHasher(s.num_perm, s.ngram, s.lowercase, s.seed, s.sketch_size)
    nz = hasher.normalized(table.column("text").to_pylist())  # as the local engine: bytes
    sk = hasher.sketches_of(nz)
    ids = table.column("id").to_pylist()
    n = len(ids)
    id_hash = np.fromiter((exact_hash(i) for i in ids), np.uint64, count=n)
    return rows(
        n,
        pos=table.column("pos"),
        key=id_hash.view(np.int64),
        id=table.column("id"),
        exact=textbytes.exact_hashes(nz).view(np.int64),
        full=nz.n_words > 0,
        sig=packed(sk.sig.reshape(-1), np.full(n, s.num_perm)),
        sketch=packed(sk.values, sk.lengths),
    )


def first_occurrences(part: pa.Table) -> pa.Table:
    """One id partition: ``other`` = the position of the id's first occurrence (an id seen
    again gets its first occurrence's decision, as in the local engine)."""
    frame = pl.DataFrame({"id": pl.from_arrow(part.column("id")), "pos": col(part, "pos")})
    first = frame.select(pl.col("pos").min().over("id"))["pos"].to_numpy()
    return _without_part(part).set_column(3, "other", pa.array(first))


def exact_parents(part: pa.Table, exact: bool) -> pa.Table:
    """One exact-hash partition: each document's parent is the earliest with its hash (with
    ``exact`` off, a plain map: every document is kept), as DATA keyed by the document."""
    pos = col(part, "pos")
    first = pl.DataFrame({"h": col(part, "exact"), "pos": pos})
    first = first.select(pl.col("pos").min().over("h"))["pos"].to_numpy()
    dup = (first != pos) if exact else np.zeros(pos.size, np.bool_)
    out = _without_part(part).set_column(1, "key", pa.array(pos))
    out = out.set_column(2, "tag", pa.array(np.full(pos.size, DATA, np.int8)))
    out = out.set_column(3, "other", pa.array(np.where(dup, first, -1)))
    out = out.set_column(5, "method", pa.array(np.where(dup, EXACT, KEPT).astype(np.int8)))
    return out.set_column(6, "sim", pa.array(np.where(dup, 1.0, 0.0)))


def band_rows(table: pa.Table, bands: int, rows_per_band: int, num_perm: int) -> pa.Table:
    """Map over LSH documents: one (pos, band, key) row per band."""
    values, _ = uint32s(table.column("sig"))
    keys = lsh.band_keys(values.reshape(-1, num_perm), bands, rows_per_band)
    frame = lsh.bucket_frame(col(table, "pos"), keys)
    return rows(
        frame.height,
        pos=frame["order"].to_numpy(),
        key=frame["key"].to_numpy().view(np.int64),
        band=frame["band"].to_numpy(),
    )


def bucket_pairs(part: pa.Table, window: int) -> pa.Table:
    """One band-key partition (every bucket whole): candidate pairs, keyed by doc."""
    frame = pl.DataFrame(
        {
            "order": col(part, "pos"),
            "band": col(part, "band"),
            "key": col(part, "key").view(np.uint64),
        }
    )
    empty = pl.DataFrame(schema={"order": pl.Int64, "band": pl.Int16, "key": pl.UInt64})
    pairs = lsh.candidate_pairs(empty, frame, window)
    doc = pairs["doc"].to_numpy()
    return rows(doc.size, pos=doc, key=doc, tag=np.full(doc.size, QUERY), other=pairs["other"])


class Payload(NamedTuple):
    """A signed block's signatures and sketches as numpy views of its object (zero-copy)."""

    pos: np.ndarray  # the block's positions, increasing
    sig: np.ndarray  # (rows, num_perm) uint32
    values: np.ndarray  # the sketches concatenated, uint32
    offsets: np.ndarray  # where row r's sketch starts in values
    lengths: np.ndarray


def payload(table: pa.Table, num_perm: int) -> Payload:
    """The ``Payload`` of a signed block's DATA rows (``task_steps.sign``'s second output)."""
    values, lengths = uint32s(table.column("sketch"))
    sig = uint32s(table.column("sig"))[0].reshape(-1, num_perm)
    return Payload(col(table, "pos"), sig, values, np.cumsum(lengths) - lengths, lengths)


def pair_side(blocks: list[Payload], positions: np.ndarray) -> verify.Side:
    """Signatures and sketches of documents ``positions`` (each in one of ``blocks``, whose
    positions increase from block to block), in that order: each block's rows are copied
    out of its views. (A take over the blocks as one chunked table first concatenates every
    chunk: the blocks' whole signatures and sketches, once per batch of pairs.)"""
    starts = np.array([b.pos[0] if b.pos.size else -1 for b in blocks], np.int64)
    block = np.searchsorted(starts, positions, side="right") - 1
    order = np.argsort(block, kind="stable")
    bounds = np.searchsorted(block[order], np.arange(len(blocks) + 1))
    sigs, values, lengths = [np.zeros((0, blocks[0].sig.shape[1]), np.uint32)], [], []
    for k, b in enumerate(blocks):
        at = order[bounds[k] : bounds[k + 1]]
        if at.size:
            rows = _index(b.pos, positions[at])
            sigs.append(b.sig[rows])
            v, n = verify.ragged_take(b.values, b.offsets, b.lengths, rows)
            values.append(v)
            lengths.append(n)
    values = np.concatenate(values) if values else np.zeros(0, np.uint32)
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    back = np.empty_like(order)  # from block order back to the order of positions
    back[order] = np.arange(order.size)
    sketches = verify.ragged_take(values, np.cumsum(lengths) - lengths, lengths, back)
    return np.concatenate(sigs)[back], sketches


def verify_pairs(
    doc: np.ndarray, other: np.ndarray, mine: verify.Side, theirs: verify.Side, s: DedupSettings
) -> pa.Table:
    """Candidate pairs (doc, other) with each side's signatures and sketches: the verified
    pairs (doc, other, sim) as QUERY rows keyed by doc."""
    sim, ok = verify.judge(mine, theirs, s)
    doc = doc[ok]
    n = doc.size
    return rows(n, pos=doc, key=doc, tag=np.full(n, QUERY), other=other[ok], sim=sim[ok])


def choose_parents(part: pa.Table) -> pa.Table:
    """One doc partition of decided documents (DATA) and verified pairs (QUERY): a document
    not removed as exact takes its earliest verified candidate as parent. Returns the state of
    pointer jumping: ``other`` = the parent, or the document itself when it is kept."""
    data, pairs = side(part, DATA), side(part, QUERY)
    doc, other, sim = col(pairs, "pos"), col(pairs, "other"), col(pairs, "sim")
    order = np.lexsort((other, doc))
    doc, other, sim = doc[order], other[order], sim[order]
    first = np.ones(doc.size, np.bool_)
    first[1:] = doc[1:] != doc[:-1]
    pos = col(data, "pos")
    parent, method, similarity = (col(data, c).copy() for c in ("other", "method", "sim"))
    at = _index(pos, doc[first])
    parent[at], method[at], similarity[at] = other[first], MINHASH, sim[first]
    ptr = np.where(parent >= 0, parent, pos)
    return rows(
        pos.size, pos=pos, key=ptr, other=ptr, method=method, sim=similarity, id=data.column("id")
    )


def jump_inputs(state: pa.Table) -> pa.Table:
    """Map over the state: each document as DATA (keyed by itself), and each removed one
    also as a QUERY keyed by its pointer's target."""
    pos, ptr = col(state, "pos"), col(state, "other")
    moved = ptr != pos
    data = state.set_column(1, "key", pa.array(pos))
    data = data.set_column(2, "tag", pa.array(np.full(pos.size, DATA, np.int8)))
    query = state.filter(pa.array(moved)).set_column(1, "key", pa.array(ptr[moved]))
    query = query.set_column(2, "tag", pa.array(np.full(int(moved.sum()), QUERY, np.int8)))
    return pa.concat_tables([data, query])


def jump(part: pa.Table) -> pa.Table:
    """One round of pointer jumping over a partition of targets: each QUERY's pointer moves
    to its target's pointer and takes its target's id; ``tag`` = 1 where a pointer moved.
    Kept documents (DATA pointing at themselves) pass through; removed ones leave as QUERY."""
    data, queries = side(part, DATA), side(part, QUERY)
    target = _lookup(data, col(queries, "other"))
    ptr, new = col(queries, "other"), col(target, "other")
    moved = (new != ptr).astype(np.int8)
    out = _without_part(queries).set_column(3, "other", pa.array(new))
    out = out.set_column(2, "tag", pa.array(moved)).set_column(8, "dup_of", target.column("id"))
    kept = _without_part(data.filter(pa.array(col(data, "other") == col(data, "pos"))))
    kept = kept.set_column(2, "tag", pa.array(np.zeros(kept.num_rows, np.int8)))
    return pa.concat_tables([out.set_column(1, "key", pa.array(col(out, "pos"))), kept])


def alias_decisions(part: pa.Table) -> pa.Table:
    """One partition of removed first occurrences (DATA) and repeated ids (QUERY, keyed by
    their first occurrence): a repeat of a removed document is removed the same way."""
    data, queries = side(part, DATA), side(part, QUERY)
    first = col(queries, "key")
    at, hit = _find(col(data, "pos"), first)
    taken = data.take(pa.array(at[hit]))
    return rows(
        int(hit.sum()),
        pos=col(queries, "pos")[hit],
        key=first[hit],
        other=first[hit],
        method=taken.column("method"),
        sim=taken.column("sim"),
        id=queries.filter(pa.array(hit)).column("id"),
        dup_of=taken.column("dup_of"),
    )


def _find(pos: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(where, found): the index in ``pos`` of each of ``positions``, and whether it is there
    (where is meaningless when not found)."""
    if pos.size == 0:
        return np.zeros(positions.size, np.int64), np.zeros(positions.size, np.bool_)
    sorter = np.argsort(pos)
    at = sorter[np.minimum(np.searchsorted(pos, positions, sorter=sorter), pos.size - 1)]
    return at, pos[at] == positions


def _index(pos: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Where each of ``positions`` is in ``pos``; each must be there (a shuffle puts every
    key's DATA row in the partition of its QUERY rows)."""
    at, found = _find(pos, positions)
    if not found.all():
        raise RuntimeError("a shuffle lost rows: a key's DATA row is not in its partition")
    return at


def _lookup(data: pa.Table, positions: np.ndarray) -> pa.Table:
    """The DATA rows of documents ``positions``, in that order."""
    return data.take(pa.array(_index(col(data, "pos"), positions), pa.int64()))


def _without_part(table: pa.Table) -> pa.Table:
    return table.drop(["part"]) if "part" in table.column_names else table


def _columns(table: pa.Table) -> dict[str, pa.ChunkedArray]:
    return {name: table.column(name) for name in table.column_names}


# -- maps between the shuffles: which rows go on, keyed by what ----------------------------
def first_rows(table: pa.Table) -> pa.Table:
    """The first occurrences of ids, keyed by exact hash for ``exact_parents``."""
    out = table.filter(pa.array(col(table, "pos") == col(table, "other")))
    return out.set_column(1, "key", out.column("exact"))


def repeats(table: pa.Table) -> pa.Table:
    """Later occurrences of ids, as QUERY rows keyed by their first occurrence."""
    pos, first = col(table, "pos"), col(table, "other")
    out = table.filter(pa.array(pos != first)).select(["pos", "other", "id"])
    n = out.num_rows
    return rows(
        n,
        pos=out.column("pos"),
        key=out.column("other"),
        tag=np.full(n, QUERY),
        id=out.column("id"),
    )


def lsh_documents(table: pa.Table) -> pa.Table:
    """The documents that enter LSH buckets (kept by exact dedup, with words), as DATA."""
    keep = (col(table, "method") == KEPT) & col(table, "full")
    return table.filter(pa.array(keep))


def removed(state: pa.Table) -> pa.Table:
    """The removed documents of the final state, as DATA keyed by themselves."""
    return state.filter(pa.array(col(state, "other") != col(state, "pos")))

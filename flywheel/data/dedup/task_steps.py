"""What each Ray task of the distributed dedup runs: a step of ``distributed`` over the pieces
sent to it, and the split of its output into the pieces for the next stage's tasks. Pure
pyarrow/numpy, no Ray (``ray_engine`` submits these), so a whole run can be replayed here.

    python -c "from flywheel.data.dedup.task_steps import split; help(split)"

Two ways to route a row to its next task:
- by hash partition (``split``): ``key`` mod ``partitions``, for the shuffles by id, exact
  hash, band key and document (every row of one key meets in one task);
- by input block (``split_blocks``): the task of the block holding a document, for the
  verification of its candidate pairs. Signatures and sketches stay where the signature task
  left them (one object per block) and no shuffle carries them: ``verify`` is handed its
  block's object and those of the blocks its pairs point to (read in place, zero-copy).

A task returns each routed output as ONE object, a ``Routed`` (its rows sorted by destination
and where each destination's rows start), and the task of destination ``i`` reads its slice
of every such object (zero-copy from the object store). Why not one object per destination:
Ray spends about 0.7 ms per returned object on this machine, and a stage of 45 blocks x 32
partitions would make 1,440 of them, a second per shuffle for a few MB of keys. The price is
that a node pulls whole objects to read its slices: right on one machine and a few nodes; on
hundreds of nodes, a map task should return one object per group of destinations.

Every step takes groups of inputs (lists of ``Routed``, or of whole tables for the block
objects of ``sign``) and its own destination index ``i``, and returns a list of outputs. A
keyed stage's P partitions run in fewer tasks (``each``: a range of partitions, one at a
time, outputs merged), since every task reads every output of the stage before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from flywheel.core.settings.dedup import DedupSettings
from flywheel.data.dedup import distributed as d
from flywheel.data.dedup.distributed import DATA, col, rows

_BAND_COLUMNS = ["pos", "key", "band"]
# submit(fn, num_returns, groups, **kwargs): fn(*groups, **kwargs) as a task; its outputs
Submit = Callable[..., list[Any]]
_VERIFY_CHUNK = 4096  # candidate pairs judged at once: ~10 MB of signatures and sketches


class Routed(NamedTuple):
    """A step's output for the next stage's tasks: ``table`` sorted by destination, whose
    rows for destination i are rows bounds[i] to bounds[i + 1]."""

    table: pa.Table
    bounds: np.ndarray

    def piece(self, i: int) -> pa.Table:
        return self.table.slice(int(self.bounds[i]), int(self.bounds[i + 1] - self.bounds[i]))


def _route(table: pa.Table, dest: np.ndarray, n: int) -> Routed:
    order = np.argsort(dest, kind="stable")
    bounds = np.searchsorted(dest[order], np.arange(n + 1))
    return Routed(table.take(pa.array(order)), bounds)


def split(table: pa.Table, partitions: int) -> Routed:
    """The hash partitions of ``table`` by its ``key`` (hashes or positions: a modulus
    spreads both evenly)."""
    return _route(table, col(table, "key").view(np.uint64) % np.uint64(partitions), partitions)


def split_blocks(table: pa.Table, starts: np.ndarray, column: str = "key") -> Routed:
    """``table`` by the input block holding document ``column`` (blocks start at positions
    ``starts``, increasing)."""
    block = np.searchsorted(starts, col(table, column), side="right") - 1
    return _route(table, block, starts.size)


def gather(routed: list[Routed], i: int) -> pa.Table:
    """Destination ``i``'s rows of every routed output, as one table."""
    pieces = [r.piece(i) for r in routed]
    return pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]


def _nulled(table: pa.Table, names: list[str]) -> pa.Table:
    for name in names:
        at = table.schema.get_field_index(name)
        table = table.set_column(at, name, pa.nulls(table.num_rows, table.schema.field(at).type))
    return table


# -- the stages, in order ----------------------------------------------------------------------
def sign(block: list[pa.Table], settings: DedupSettings, partitions: int) -> list[Any]:
    """An input block (pos, id, text): its rows without signatures, split by id hash for
    ``firsts``; then its signatures and sketches (DATA, kept for the pair joins), and the band
    rows (pos, key, band) of its documents with words."""
    s = settings
    signed = d.signatures(block[0], s)
    payload = rows(
        signed.num_rows,
        pos=signed.column("pos"),
        key=signed.column("pos"),
        tag=np.full(signed.num_rows, DATA, np.int8),
        sig=signed.column("sig"),
        sketch=signed.column("sketch"),
    )
    bands, per_band = s.resolve_bands()
    full = signed.filter(signed.column("full"))
    if full.num_rows:
        band_rows = d.band_rows(full, bands, per_band, s.num_perm).select(_BAND_COLUMNS)
    else:
        band_rows = d.rows(0).select(_BAND_COLUMNS)
    return [split(_nulled(signed, ["sig", "sketch"]), partitions), payload, band_rows]


def firsts(signed: list[Routed], i: int, partitions: int) -> list[Routed]:
    """Id partition ``i``: the first occurrences, split by exact hash for ``exact``; then the
    repeated ids (QUERY keyed by their first occurrence), split for ``final``."""
    table = d.first_occurrences(gather(signed, i))
    return [split(d.first_rows(table), partitions), split(d.repeats(table), partitions)]


def exact(
    firsts: list[Routed], i: int, exact: bool, partitions: int, starts: np.ndarray | None
) -> list[Routed]:
    """Exact-hash partition ``i``: decided documents (DATA keyed by themselves) split for
    ``parents``; then, when ``starts`` is given (near-duplicate search on), the positions of
    the documents that enter LSH, by block for ``bands``."""
    decided = d.exact_parents(gather(firsts, i), exact)
    out = [split(decided, partitions)]
    if starts is not None:
        out.append(split_blocks(d.lsh_documents(decided).select(["pos"]), starts, "pos"))
    return out


def bands(band_rows: list[pa.Table], eligible: list[Routed], i: int, partitions: int) -> list:
    """Block ``i``: the band rows of its documents that enter LSH, split by band key."""
    table = band_rows[0]
    keep = np.isin(col(table, "pos"), col(gather(eligible, i), "pos"))
    return [split(table.filter(pa.array(keep)), partitions)]


def pairs(bands: list[Routed], i: int, window: int, starts: np.ndarray) -> list[Any]:
    """Band-key partition ``i`` (every bucket whole): candidate pairs (QUERY keyed by doc), by
    the block of doc for ``verify``; then which blocks each block's pairs point to (rows of
    (doc's block, other's block)), so that ``verify`` is handed just those blocks."""
    table = gather(bands, i)
    found = d.bucket_pairs(table, window) if table.num_rows else rows(0)
    at = np.searchsorted(starts, [col(found, "pos"), col(found, "other")], side="right") - 1
    return [split_blocks(found, starts), np.unique(at.T, axis=0).reshape(-1, 2)]


def verify(
    payloads: list[pa.Table],
    found: list[Routed],
    i: int,
    settings: DedupSettings,
    partitions: int,
) -> list[Routed]:
    """Block ``i`` (its signatures first in ``payloads``, then those of every block its pairs'
    other documents are in): its distinct candidate pairs judged ``_VERIFY_CHUNK`` at a time,
    each side's signatures and sketches copied out of the blocks' objects for just those
    pairs, so what a task holds stays bounded however many pairs and blocks a block has;
    verified pairs (QUERY keyed by doc) split for ``parents``."""
    queries = gather(found, i)
    doc, other = col(queries, "pos"), col(queries, "other")
    order = np.lexsort((other, doc))
    doc, other = doc[order], other[order]
    distinct = np.ones(order.size, np.bool_)
    distinct[1:] = (doc[1:] != doc[:-1]) | (other[1:] != other[:-1])
    doc, other = doc[distinct], other[distinct]
    mine = [d.payload(payloads[0], settings.num_perm)]
    theirs = [d.payload(p, settings.num_perm) for p in payloads[1:]]
    verified, chunk = [rows(0)], _VERIFY_CHUNK
    for a in range(0, doc.size, chunk):
        pair = doc[a : a + chunk], other[a : a + chunk]
        sides = d.pair_side(mine, pair[0]), d.pair_side(theirs, pair[1])
        verified.append(d.verify_pairs(*pair, *sides, settings))
    return [split(pa.concat_tables(verified), partitions)]


def parents(decided: list[Routed], verified: list[Routed], i: int, partitions: int) -> list:
    """Document partition ``i`` of decided documents and verified pairs: each document's
    parent, as the first round's input of pointer jumping (split by target)."""
    table = gather(decided + verified, i)
    return [split(d.jump_inputs(d.choose_parents(table)), partitions)]


def jump(state: list[Routed], i: int, partitions: int) -> list[Any]:
    """Target partition ``i``: one round of pointer jumping; the next round's input split by
    target, then how many pointers moved (none: this round's state is final)."""
    state = d.jump(gather(state, i))
    return [split(d.jump_inputs(state), partitions), int(col(state, "tag").sum())]


def final(state: list[Routed], repeated: list[Routed], i: int) -> list[pa.Table]:
    """Document partition ``i`` of the final state (as ``jump`` splits it: every document as
    DATA keyed by itself) and of the repeated ids: the removed documents, the repeats of
    removed first occurrences included."""
    table = gather(state, i)
    gone = d.removed(table.filter(pa.array(col(table, "tag") == DATA)))
    queries = gather(repeated, i)  # QUERY rows keyed by their first occurrence
    if gone.num_rows and queries.num_rows:
        gone = pa.concat_tables([gone, d.alias_decisions(pa.concat_tables([gone, queries]))])
    return [gone]


# -- the graph: which task reads which outputs --------------------------------------------
def run_stages(
    signed: list[list[Any]],
    starts: np.ndarray,
    s: DedupSettings,
    P: int,
    submit: Submit,
    get: Callable[[list[Any]], list[Any]],
    tasks: int | None = None,
) -> list[Any]:
    """Every stage after ``sign`` (``signed``: each block's three outputs), submitted at once
    through ``submit``, the P partitions of each keyed stage in ``tasks`` tasks (default P);
    only pointer jumping waits, through ``get``, for its count of moved pointers. The removed
    documents, one output per task."""
    T = min(P, tasks or P)

    def stage(step: Callable, num_returns: int, groups: list[list[Any]], **kw: Any) -> list:
        return _by_partition(submit, step, num_returns, groups, P, T, **kw)

    first = stage(firsts, 2, [_column(signed, 0)], partitions=P)
    lsh = starts if s.minhash else None
    decided = stage(
        exact, 1 + s.minhash, [_column(first, 0)], exact=s.exact, partitions=P, starts=lsh
    )
    verified = []
    if s.minhash:
        verified = _near_duplicates(signed, _column(decided, 1), starts, s, P, stage, submit, get)
    state = _column(stage(parents, 1, [_column(decided, 0), verified], partitions=P), 0)
    while True:  # pointer jumping: a round per shuffle by target, until no pointer moves
        jumped = stage(jump, 2, [state], partitions=P)
        state = _column(jumped, 0)
        if not sum(get(_column(jumped, 1))):
            break
    return _column(stage(final, 1, [state, _column(first, 1)]), 0)


def _near_duplicates(
    signed: list[list[Any]],
    eligible: list[Any],
    starts: np.ndarray,
    s: DedupSettings,
    P: int,
    stage: Callable[..., list],
    submit: Submit,
    get: Callable[[list[Any]], list[Any]],
) -> list[Any]:
    """Verified pairs (QUERY keyed by doc), one routed output per block."""
    B, window = len(signed), s.bucket_window
    payload, band_rows = _column(signed, 1), _column(signed, 2)
    keyed = [submit(bands, 1, [[band_rows[b]], eligible], i=b, partitions=P)[0] for b in range(B)]
    found = stage(pairs, 2, [keyed], window=window, starts=starts)
    # a barrier for a few bytes: which blocks each block's pairs point to
    links = np.concatenate([np.zeros((0, 2), np.int64), *get(_column(found, 1))])
    routed = _column(found, 0)
    out = []
    for b in range(B):
        needed = [payload[o] for o in np.unique(links[links[:, 0] == b, 1])]
        groups = [[payload[b], *needed], routed]
        out.append(submit(verify, 1, groups, i=b, settings=s, partitions=P)[0])
    return out


def _by_partition(
    submit: Submit, step: Callable, num_returns: int, groups: list, P: int, T: int, **kw: Any
) -> list[list[Any]]:
    """``step`` over partitions 0..P-1 in T tasks of consecutive partitions: each task's
    outputs. Why not a task per partition: every task reads every input object, and Ray
    spends ~0.2 ms of worker CPU per object read, plus driver and raylet time per task and
    reference, which made these small stages cost more than their work (16x corpus: ~14,000
    reads, 3 of the workers' 8 CPU-s); a task still holds one partition at a time."""
    cuts = [P * g // T for g in range(T + 1)]
    return [
        submit(each, num_returns, groups, step=step, parts=range(a, b), **kw)
        for a, b in zip(cuts, cuts[1:], strict=False)
    ]


def each(*groups: list[Any], step: Callable, parts: range, **kw: Any) -> list[Any]:
    """``step`` over partitions ``parts`` in turn, its outputs merged: one object per output
    for the next stage (routed rows re-sorted by destination, tables concatenated, pairs'
    block links concatenated, moved-pointer counts summed)."""
    outs = [step(*groups, i=p, **kw) for p in parts]
    return [_merge([out[k] for out in outs]) for k in range(len(outs[0]))]


def _merge(outs: list[Any]) -> Any:
    first = outs[0]
    if len(outs) == 1:
        return first
    if isinstance(first, Routed):
        n = first.bounds.size - 1
        dest = np.concatenate([np.repeat(np.arange(n), np.diff(r.bounds)) for r in outs])
        return _route(pa.concat_tables([r.table for r in outs]), dest, n)
    if isinstance(first, pa.Table):
        return pa.concat_tables(outs)
    if isinstance(first, np.ndarray):
        return np.concatenate(outs)
    return sum(outs)


def _column(outputs: list[list[Any]], i: int) -> list[Any]:
    """The ``i``-th output of every task of a stage: what the ``i``-th next task reads."""
    return [refs[i] for refs in outputs]


def run_here(
    blocks: list[pa.Table], settings: DedupSettings, partitions: int, tasks: int | None = None
) -> pa.Table:
    """The whole task graph in this process, task after task (what Ray runs, without Ray):
    the removed documents of blocks (pos, id, text) in increasing positions."""

    def call(fn: Any, num_returns: int, groups: list[list[Any]], **kwargs: Any) -> list[Any]:
        return fn(*groups, **kwargs)

    signed = [sign([b], settings, partitions) for b in blocks if b.num_rows]
    starts = np.array([b.column("pos")[0].as_py() for b in blocks if b.num_rows], np.int64)
    gone = run_stages(signed, starts, settings, partitions, call, lambda xs: xs, tasks)
    return pa.concat_tables(gone).sort_by("pos")

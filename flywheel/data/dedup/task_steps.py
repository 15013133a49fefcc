"""What each Ray task of the distributed dedup runs: a step of ``distributed`` over the pieces
sent to it, and the split of its output into the pieces for the next stage's tasks. Pure
pyarrow/numpy, no Ray (``ray_engine`` submits these), so a whole run can be replayed here.

    python -c "from flywheel.data.dedup.task_steps import split; help(split)"

Two ways to route a row to its next task:
- by hash partition (``split``): ``key`` mod ``partitions``, for the shuffles by id, exact
  hash, band key and document (every row of one key meets in one task);
- by input block (``split_blocks``): the task of the block holding a document, for the two
  joins that need signatures and sketches. Those stay where the signature task left them
  (one object per block), and only candidate pairs travel to them: no shuffle carries a
  document's signature or sketch except the one side of a candidate pair that ``attach``
  sends to its other side's block.

Every step takes groups of pieces (lists of tables) and returns a list of tables (or, for
pointer jumping, also how many pointers moved); pieces of a group share one schema.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from flywheel.core.settings.dedup import DedupSettings
from flywheel.data.dedup import distributed as d
from flywheel.data.dedup.distributed import DATA, col, rows

_BAND_COLUMNS = ["pos", "key", "band"]


def _split_by(table: pa.Table, dest: np.ndarray, n: int) -> list[pa.Table]:
    """``n`` tables: row r goes to table dest[r] (a copy each: Ray then ships only it)."""
    order = np.argsort(dest, kind="stable")
    bounds = np.searchsorted(dest[order], np.arange(n + 1))
    return [table.take(pa.array(order[a:b])) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def split(table: pa.Table, partitions: int) -> list[pa.Table]:
    """The hash partitions of ``table`` by its ``key`` (hashes or positions: a modulus
    spreads both evenly)."""
    return _split_by(table, col(table, "key").view(np.uint64) % np.uint64(partitions), partitions)


def split_blocks(table: pa.Table, starts: np.ndarray, column: str = "key") -> list[pa.Table]:
    """``table`` by the input block holding document ``column`` (blocks start at positions
    ``starts``, increasing)."""
    block = np.searchsorted(starts, col(table, column), side="right") - 1
    return _split_by(table, block, starts.size)


def _concat(pieces: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]


def _nulled(table: pa.Table, names: list[str]) -> pa.Table:
    for name in names:
        at = table.schema.get_field_index(name)
        table = table.set_column(at, name, pa.nulls(table.num_rows, table.schema.field(at).type))
    return table


# -- the stages, in order ----------------------------------------------------------------------
def sign(block: list[pa.Table], settings: DedupSettings, partitions: int) -> list[pa.Table]:
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
    return [*split(_nulled(signed, ["sig", "sketch"]), partitions), payload, band_rows]


def firsts(pieces: list[pa.Table], partitions: int) -> list[pa.Table]:
    """An id partition: the first occurrences, split by exact hash for ``exact``; then the
    repeated ids (QUERY keyed by their first occurrence), split for ``final``."""
    table = d.first_occurrences(_concat(pieces))
    return [*split(d.first_rows(table), partitions), *split(d.repeats(table), partitions)]


def exact(
    pieces: list[pa.Table], exact: bool, partitions: int, starts: np.ndarray | None
) -> list[pa.Table]:
    """An exact-hash partition: decided documents (DATA keyed by themselves) split for
    ``parents``; then, when ``starts`` is given (near-duplicate search on), the positions of
    the documents that enter LSH, by block for ``bands``."""
    decided = d.exact_parents(_concat(pieces), exact)
    out = split(decided, partitions)
    if starts is not None:
        out += split_blocks(d.lsh_documents(decided).select(["pos"]), starts, "pos")
    return out


def bands(band_rows: list[pa.Table], eligible: list[pa.Table], partitions: int) -> list[pa.Table]:
    """A block: the band rows of its documents that enter LSH, split by band key."""
    table = band_rows[0]
    keep = np.isin(col(table, "pos"), col(_concat(eligible), "pos"))
    return split(table.filter(pa.array(keep)), partitions)


def pairs(pieces: list[pa.Table], window: int, starts: np.ndarray) -> list[pa.Table]:
    """A band-key partition (every bucket whole): candidate pairs (QUERY keyed by doc), by
    the block of doc for ``attach``."""
    table = _concat(pieces)
    found = d.bucket_pairs(table, window) if table.num_rows else rows(0)
    return split_blocks(found, starts)


def attach(payload: list[pa.Table], found: list[pa.Table], starts: np.ndarray) -> list[pa.Table]:
    """A block: each pair whose doc is in it gets doc's signature and sketch, and goes to the
    block of its other document for ``verify``."""
    queries = _concat(found)
    attached = (
        d.attach_doc(pa.concat_tables([payload[0], queries])) if queries.num_rows else rows(0)
    )
    return split_blocks(attached, starts)


def verify(
    payload: list[pa.Table], attached: list[pa.Table], settings: DedupSettings, partitions: int
) -> list[pa.Table]:
    """A block: the pairs whose other document is in it, judged; verified pairs (QUERY keyed
    by doc) split for ``parents``."""
    queries = _concat(attached)
    if not queries.num_rows:
        return split(rows(0), partitions)
    return split(d.verify_pairs(pa.concat_tables([payload[0], queries]), settings), partitions)


def parents(pieces: list[pa.Table], partitions: int) -> list[pa.Table]:
    """A document partition of decided documents and verified pairs: each document's parent,
    as the first round's input of pointer jumping (split by target)."""
    state = d.choose_parents(_concat(pieces))
    return split(d.jump_inputs(state), partitions)


def jump(pieces: list[pa.Table], partitions: int) -> list[pa.Table | int]:
    """A target partition: one round of pointer jumping; the next round's input split by
    target, then how many pointers moved (none: this round's state is final)."""
    state = d.jump(_concat(pieces))
    return [*split(d.jump_inputs(state), partitions), int(col(state, "tag").sum())]


def final(state: list[pa.Table], repeated: list[pa.Table]) -> list[pa.Table]:
    """A document partition of the final state (as ``jump`` splits it: every document as DATA
    keyed by itself) and of the repeated ids: the removed documents, the repeats of removed
    first occurrences included."""
    table = _concat(state)
    gone = d.removed(table.filter(pa.array(col(table, "tag") == DATA)))
    queries = _concat(repeated)  # QUERY rows keyed by their first occurrence
    if gone.num_rows and queries.num_rows:
        gone = pa.concat_tables([gone, d.alias_decisions(pa.concat_tables([gone, queries]))])
    return [gone]

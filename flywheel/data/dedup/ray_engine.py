"""Deduplication on a Ray cluster (``engine: ray``): the local engine's decisions, computed by
Ray Data stages spread over the cluster's nodes.

    flywheel dedup INPUT --output DIR --engine ray [--address ADDR]
    python -c "from flywheel.data.dedup.ray_engine import deduplicate_ray as d; \\
print(d(['a', 'b'], ['x y z', 'x y z']).duplicates)"

The only module that imports Ray (inside its functions: ``engine: local`` never loads it).
The stages (each step's work is in ``flywheel.data.dedup.distributed``; a shuffle is
``groupby(part).map_groups`` over ``ray.partitions`` hash partitions of the rows' key, so a
task holds one partition and no process holds all ids, band keys or edges):

  1. signatures: ``map_batches`` over the input blocks (MinHasher: hashes, signature, sketch);
  2. first occurrences: shuffle by id (a repeated id gets its first occurrence's decision);
  3. exact parents: shuffle by exact hash;
  4. LSH: a map to one (band, key) row per band, a shuffle by band key, candidate pairs per
     bucket (``lsh.candidate_pairs``, as the local engine);
  5. verification: two shuffles join each pair with its documents' signatures and sketches
     (by doc, then by candidate), and ``verify.decide`` judges it;
  6. parents: a shuffle by doc takes its earliest verified candidate;
  7. roots: pointer-jumping rounds, each a shuffle by pointer, until no pointer moves;
  8. repeated ids: a shuffle by first occurrence copies its decision.

Fault tolerance. The shuffles are sort-based (``SORT_SHUFFLE_PULL_BASED``): plain tasks, which
Ray Data retries without limit and whose lost outputs Ray rebuilds from lineage when a node
dies. The default hash shuffle keeps partitions in actors, whose state dies with their node.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from flywheel.core.settings.dedup import DedupSettings
from flywheel.core.settings.engine import RaySettings
from flywheel.data.dedup import distributed as d
from flywheel.data.dedup.results import DUPLICATES_SCHEMA, DedupResult, _as_strings

RESULT_COLUMNS = ["pos", "id", "dup_of", "method", "sim"]
_METHOD_NAMES = np.array([None, "exact", "minhash"], dtype=object)


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached; the message says which."""


def connect(ray_settings: RaySettings) -> None:
    """Join the cluster ``ray.address`` names, or start one here when it is null; a no-op
    when this process is already connected."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable("engine: ray needs Ray Data: pip install 'flywheel[ray]'") from None
    if ray.is_initialized():
        return
    address = ray_settings.address
    try:
        if address is None:
            # "local": a new cluster here, even where `ray start` left one for others
            ray.init(address="local", num_cpus=ray_settings.num_cpus, include_dashboard=False)
        else:
            ray.init(address=address)
    except ConnectionError as e:
        raise RayUnavailable(f"cannot connect to the Ray cluster at {address}: {e}") from None


def deduplicate_ray(
    ids: Sequence[Any],
    texts: Sequence[str],
    settings: DedupSettings | None = None,
    ray_settings: RaySettings | None = None,
    block_rows: int = 2000,
) -> DedupResult:
    """``deduplicate(ids, texts, settings)`` on Ray: the same keep mask and duplicates."""
    ids, texts = _as_strings(ids), list(texts)
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
    blocks = (
        pa.table(
            {
                "pos": np.arange(a, min(a + block_rows, len(ids)), dtype=np.int64),
                "id": pa.array(ids[a : a + block_rows], pa.string()),
                "text": pa.array(texts[a : a + block_rows], pa.large_string()),
            }
        )
        for a in range(0, len(ids), block_rows)
    )
    gone = dedup_blocks(blocks, settings or DedupSettings(), ray_settings or RaySettings())
    keep = np.ones(len(ids), dtype=np.bool_)
    keep[gone.column("pos").to_numpy()] = False
    return DedupResult(keep=keep, duplicates=duplicates_frame(gone), stats=counts(keep, gone))


def duplicates_frame(gone: pa.Table) -> pl.DataFrame:
    """``dedup_blocks``' removed rows as the local engine's duplicates (DUPLICATES_SCHEMA)."""
    return pl.DataFrame(
        {
            "id": gone.column("id").to_pylist(),
            "duplicate_of": gone.column("dup_of").to_pylist(),
            "method": _METHOD_NAMES[gone.column("method").to_numpy()].tolist(),
            "similarity": gone.column("sim").to_numpy(),
        },
        schema=DUPLICATES_SCHEMA,
    )


def counts(keep: np.ndarray, gone: pa.Table) -> dict[str, int]:
    method = gone.column("method").to_numpy()
    return {
        "docs": int(keep.size),
        "kept": int(keep.sum()),
        "removed": int((~keep).sum()),
        "exact_removed": int((method == d.EXACT).sum()),
        "minhash_removed": int((method == d.MINHASH).sum()),
    }


def dedup_blocks(
    blocks: Iterable[pa.Table], settings: DedupSettings, ray_settings: RaySettings
) -> pa.Table:
    """The removed documents (``RESULT_COLUMNS``, by position) of blocks (pos, id, text):
    each block goes to the object store as it comes, so the caller holds one at a time."""
    connect(ray_settings)
    import ray

    refs = [ray.put(block) for block in blocks]
    if not refs:
        return d.rows(0).select(RESULT_COLUMNS)
    with _data_context():
        ds = ray.data.from_arrow_refs(refs)
        gone = _decide(ds, settings, ray_settings.partitions)
        tables = [ray.get(ref) for ref in gone.to_arrow_refs()]
    tables = [t.select(RESULT_COLUMNS) for t in tables if t.num_rows]
    empty = d.rows(0).select(RESULT_COLUMNS)
    return pa.concat_tables(tables).sort_by("pos") if tables else empty


@contextlib.contextmanager
def _data_context() -> Iterator[None]:
    """Task-based shuffles (see the module docstring), no progress bars nor a log line per
    stage (a run has a dozen); restored after."""
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    ctx = DataContext.get_current()
    log = logging.getLogger("ray.data")
    saved = ctx.shuffle_strategy, ctx.enable_progress_bars, log.level
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    ctx.enable_progress_bars = False
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        ctx.shuffle_strategy, ctx.enable_progress_bars, level = saved
        log.setLevel(level)


def _map(ds: Any, fn: Any, **kwargs: Any) -> Any:
    return ds.map_batches(fn, batch_format="pyarrow", batch_size=None, fn_kwargs=kwargs)


def _shuffle(ds: Any, fn: Any, partitions: int, **kwargs: Any) -> Any:
    """``fn`` over each hash partition of the rows' ``key``, materialized (in the object
    store, spread over the nodes) since every result is read by two later stages."""
    keyed = _map(ds, d.with_part, partitions=partitions)
    grouped = keyed.groupby("part").map_groups(fn, batch_format="pyarrow", fn_kwargs=kwargs)
    return grouped.materialize()


def _decide(ds: Any, s: DedupSettings, partitions: int) -> Any:
    """The removed documents, with the local engine's parents and roots."""
    firsts = _shuffle(_map(ds, d.signatures, settings=s), d.first_occurrences, partitions)
    unique = _map(firsts, d.first_rows)
    if s.exact:
        decided = _shuffle(unique, d.exact_parents, partitions, exact=True)
    else:
        decided = _map(unique, d.exact_parents, exact=False).materialize()
    verified = _near_duplicates(decided, s, partitions) if s.minhash else None
    parents_in = decided if verified is None else decided.union(verified)
    state = _roots(_shuffle(parents_in, d.choose_parents, partitions), partitions)
    gone = _map(state, d.removed).materialize()
    repeats = _map(firsts, d.repeats).materialize()
    if repeats.count() and gone.count():
        aliases = _shuffle(gone.union(repeats), d.alias_decisions, partitions)
        gone = gone.union(aliases)
    return gone


def _near_duplicates(decided: Any, s: DedupSettings, partitions: int) -> Any | None:
    """Verified pairs (doc, other, sim) keyed by doc, or None when there are none."""
    bands, rows = s.resolve_bands()
    docs = _map(decided, d.lsh_documents).materialize()
    if docs.count() == 0:
        return None
    buckets = _map(docs, d.band_rows, bands=bands, rows_per_band=rows, num_perm=s.num_perm)
    pairs = _shuffle(buckets, d.bucket_pairs, partitions, window=s.bucket_window)
    if pairs.count() == 0:
        return None
    attached = _shuffle(pairs.union(docs), d.attach_doc, partitions)
    return _shuffle(attached.union(docs), d.verify_pairs, partitions, settings=s)


def _roots(state: Any, partitions: int) -> Any:
    """Pointer jumping until no pointer moves: every removed document then points at its
    root, and carries the root's id in ``dup_of``."""
    while True:
        state = _shuffle(_map(state, d.jump_inputs), d.jump, partitions)
        if not state.sum("tag"):
            return state

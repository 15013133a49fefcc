"""Deduplication on a Ray cluster (``engine: ray``): the local engine's decisions, computed by
plain Ray tasks spread over the cluster's nodes.

    flywheel dedup INPUT --output DIR --engine ray [--address ADDR]
    python -c "from flywheel.data.dedup.ray_engine import deduplicate_ray as d; \\
print(d(['a', 'b'], ['x y z', 'x y z']).duplicates)"

The only module that imports Ray (inside its functions: ``engine: local`` never loads it).
Each task runs a step of ``flywheel.data.dedup.task_steps`` and returns its output already
split for the next stage's tasks (``ray.partitions`` hash partitions of the rows' key, or the
input block of a document), so a shuffle is one round of tasks, a task holds one partition
at a time (a keyed stage runs as two tasks per cluster CPU, each over a range of partitions),
and no process holds all ids, band keys or edges. The stages (``task_steps.run_stages``),
submitted at once: each task starts when its inputs exist; two waits, for a few bytes each
(which blocks each block's pairs point to, and each pointer-jumping round's moved count):

  1. sign, per input block: exact hash, signature, sketch and band keys of each document;
     signatures and sketches stay in that block's object, the rest goes on without them;
  2. firsts, by id: a repeated id gets its first occurrence's decision;
  3. exact, by exact hash: each document's exact parent;
  4. bands, per block: the band rows of the documents that enter LSH, by band key;
  5. pairs, by band key: candidate pairs per bucket (``lsh.candidate_pairs``, as locally);
  6. verify, per block: its pairs judged (``verify.decide``) with the signatures and sketches
     of its block and of the blocks their candidates are in, read in place;
  7. parents, by document: the earliest verified candidate;
  8. jump, by pointer: pointer-jumping rounds until no pointer moves;
  9. final, by document: the removed documents, and the repeats of removed first occurrences.

Why plain tasks rather than Ray Data's ``groupby``: a Ray Data shuffle costs a second or two
of planning, sampling and a barrier on two cores whatever its size, and this pipeline needs
ten of them; a round of tasks costs milliseconds each. Fault tolerance is Ray's for tasks: a
task whose worker or node dies is retried, and its lost outputs are rebuilt from lineage
(the input blocks stay referenced until the end, so signing can be redone).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from flywheel.core.settings.dedup import DedupSettings
from flywheel.core.settings.engine import RaySettings
from flywheel.data.dedup import distributed as d
from flywheel.data.dedup import task_steps as t
from flywheel.data.dedup.results import DUPLICATES_SCHEMA, DedupResult, _as_strings

RESULT_COLUMNS = ["pos", "id", "dup_of", "method", "sim"]
_METHOD_NAMES = np.array([None, "exact", "minhash"], dtype=object)
_RETRIES = 8  # per task, for lost workers and nodes
_TASKS_PER_CPU = 2  # tasks per keyed stage, per CPU of the cluster (at most ray.partitions)


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
    """The removed documents (``RESULT_COLUMNS``, by position) of blocks (pos, id, text), in
    increasing positions: each block goes to the object store, and its signature task is
    submitted, as it comes, so the caller holds one at a time while the first ones run."""
    connect(ray_settings)
    import ray

    # the LSH layout chosen here, once: its optimizer imports scipy (~0.3 CPU-s), which every
    # worker process would otherwise do again
    bands, rows = settings.resolve_bands()
    P, s = ray_settings.partitions, settings.model_copy(update={"bands": bands, "rows": rows})
    # the inputs stay referenced until the end: a lost signature object is rebuilt from them
    inputs, signed, starts, last = [], [], [], -1
    for block in blocks:
        if not block.num_rows:
            continue
        pos = block.column("pos").to_numpy()
        if pos[0] <= last or np.any(np.diff(pos) <= 0):
            raise ValueError("dedup_blocks needs blocks of increasing positions, in order")
        starts.append(int(pos[0]))
        last = int(pos[-1])
        inputs.append(ray.put(block))
        signed.append(_submit(t.sign, 3, [[inputs[-1]]], settings=s, partitions=P))
    if not inputs:
        return d.rows(0).select(RESULT_COLUMNS)
    # two tasks per CPU: fewer tasks read fewer objects, two per CPU keep every CPU busy
    # while a stage's slowest task finishes
    tasks = _TASKS_PER_CPU * max(1, int(ray.cluster_resources().get("CPU", 1)))
    gone = t.run_stages(signed, np.array(starts, np.int64), s, P, _submit, ray.get, tasks)
    tables = [tb.select(RESULT_COLUMNS) for tb in ray.get(gone) if tb.num_rows]
    empty = d.rows(0).select(RESULT_COLUMNS)
    return pa.concat_tables(tables).sort_by("pos") if tables else empty


def _apply(fn: Any, sizes: tuple[int, ...], kwargs: dict[str, Any], *tables: Any) -> Any:
    """Body of every task: ``fn`` over its arguments regrouped (Ray resolves only top-level
    object refs, so the groups travel flat)."""
    groups, at = [], 0
    for n in sizes:
        groups.append(list(tables[at : at + n]))
        at += n
    out = fn(*groups, **kwargs)
    return out[0] if len(out) == 1 else out


@functools.cache
def _remote() -> Any:
    import ray

    # plain tasks: retried when their worker or node dies, and their lost outputs rebuilt
    # from lineage (the bound keeps a task that kills its worker every time from looping)
    return ray.remote(max_retries=_RETRIES)(_apply)


def _submit(fn: Any, num_returns: int, groups: list[list[Any]], **kwargs: Any) -> list[Any]:
    """Submit ``fn(*groups, **kwargs)`` as a task; its ``num_returns`` output refs."""
    flat = [ref for group in groups for ref in group]
    sizes = tuple(len(group) for group in groups)
    name = kwargs.get("step", fn).__name__  # task_steps.each runs a step over partitions
    task = _remote().options(num_returns=num_returns, name=f"dedup.{name}")
    out = task.remote(fn, sizes, kwargs, *flat)
    return out if num_returns > 1 else [out]

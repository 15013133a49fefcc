"""What a dedup batch returns, built the same way by both engines (``index.DedupIndex`` and
``ray_index.RayDedupIndex``): arrival orders of the batch's ids, the decisions as a
``DedupResult`` and its stats.

    python -c "from flywheel.data.dedup.results import *; print(DUPLICATES_SCHEMA)"
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

DUPLICATES_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "duplicate_of": pl.String(),  # the kept document the removed one's cluster resolves to
    "method": pl.String(),  # "exact" | "minhash"
    "similarity": pl.Float64(),  # estimated Jaccard with its parent; 1.0 for exact
}
KEPT, EXACT, MINHASH = 0, 1, 2
_METHOD_NAMES = np.array([None, "exact", "minhash"], dtype=object)


@dataclass
class DedupResult:
    """The decisions for one ``add``: ``keep`` is aligned with its input."""

    keep: np.ndarray
    duplicates: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=DUPLICATES_SCHEMA))
    stats: dict[str, Any] = field(default_factory=dict)


def batch_orders(
    ids: list[str], known: dict[str, int], n0: int
) -> tuple[np.ndarray, dict[str, int], np.ndarray]:
    """Arrival orders of a batch (both engines): an id the index ``known`` keeps its order,
    a new id gets the next one (n0, n0 + 1, ...; a repeat in the batch its first's). Also the
    new ids with their orders, and the batch position of each new document's first row."""
    orders = np.empty(len(ids), dtype=np.int64)
    fresh: dict[str, int] = {}  # ids new to the index -> their order
    for p, i in enumerate(ids):
        o = known.get(i)
        orders[p] = fresh.setdefault(i, n0 + len(fresh)) if o is None else o
    new_pos = np.flatnonzero(orders >= n0)
    return orders, fresh, new_pos[np.unique(orders[new_pos], return_index=True)[1]]


def with_batch_stats(
    result: DedupResult, stats: dict, texts: list[str], new_pos: np.ndarray, started: float
) -> DedupResult:
    """``result`` with the batch's processing stats, new documents, MB and seconds added."""
    mb = sum(len(texts[p].encode("utf-8", "surrogatepass")) for p in new_pos) / 1e6
    result.stats.update(
        stats,
        new_docs=len(new_pos),
        mb=round(mb, 6),
        seconds=round(time.perf_counter() - started, 6),
    )
    return result


def batch_result(
    ids: Sequence[str],
    keep: np.ndarray,
    duplicate_of: Sequence[str],
    method: np.ndarray,
    similarity: np.ndarray,
) -> DedupResult:
    """A batch's ``DedupResult`` (both engines): ``keep`` per document, and for each removed
    one, in order, the id it duplicates, its method code and its similarity."""
    gone = np.flatnonzero(~keep)
    duplicates = pl.DataFrame(
        {
            "id": [ids[p] for p in gone],
            "duplicate_of": list(duplicate_of),
            "method": _METHOD_NAMES[method].tolist(),
            "similarity": similarity,
        },
        schema=DUPLICATES_SCHEMA,
    )
    stats = {
        "docs": len(ids),
        "kept": int(keep.sum()),
        "removed": int(gone.size),
        "exact_removed": int((method == EXACT).sum()),
        "minhash_removed": int((method == MINHASH).sum()),
    }
    return DedupResult(keep=keep, duplicates=duplicates, stats=stats)


def _as_strings(ids: Sequence[Any]) -> list[str]:
    """Ids as strings (str(1) == "1"), the one type the index stores."""
    if isinstance(ids, pl.Series):
        return ids.cast(pl.String).to_list()
    return [i if isinstance(i, str) else str(i) for i in ids]

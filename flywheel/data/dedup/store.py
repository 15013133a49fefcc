"""On-disk layout of a persistent dedup index: immutable Parquet parts plus a manifest.

    <dir>/manifest.json                      settings fingerprint + the list of committed parts
    <dir>/part-00000-<hex>.parquet           one part per commit: the documents it added
    <dir>/{band,exact,ids}=<p>/part-...      its lookup partitions (``dedup.partitions``)

A part holds, per document in arrival order: id (string), root (arrival order of the kept
document it resolves to), method (0 kept, 1 exact, 2 minhash), similarity, exact (normalized-
text hash), lsh (whether it sits in LSH buckets), sig (its MinHash signature) and sketch (its
bottom-m shingle hashes, for verification; empty for exact copies), in row groups of
``ROW_GROUP`` documents so that a reader can fetch a few documents' signatures. Parts are
written first and the manifest last, each atomically (``flywheel.core.shards``), so a crash
before the manifest is replaced leaves the previous index exactly as it was; a part that no manifest
names is an orphan from such a crash and is deleted by the next commit. One writer at a time.

Inspect an index with:

    python -c "from flywheel.data.dedup.store import *; print(read_manifest(Path('DIR')))"
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from flywheel.core.artifacts import atomic_write_json
from flywheel.core.shards import atomic_write_parquet

MANIFEST = "manifest.json"
# settings that change signatures, band keys or their meaning: an index is only usable with
# the same values (threshold, verification and window may change between runs)
FINGERPRINT_FIELDS = ("hash_scheme", "num_perm", "ngram", "lowercase", "seed", "bands", "rows")
ROW_GROUP = 4096  # documents: <= 4096 x (512 B signature + 2 KiB sketch) = 10 MiB per group


def read_manifest(path: Path) -> dict[str, Any] | None:
    file = Path(path) / MANIFEST
    if not file.exists():
        return None
    return json.loads(file.read_text())


def check_fingerprint(path: Path, manifest: dict[str, Any], expected: dict[str, Any]) -> None:
    """Raise ValueError naming the first field on which the index and the settings differ."""
    for field in FINGERPRINT_FIELDS:
        if field == "hash_scheme" and manifest.get(field) != expected[field]:
            # no setting brings an old scheme back: its signatures and band keys mean nothing
            # next to the new ones, and mixing them would silently miss duplicates
            raise ValueError(
                f"dedup index {path} was built with MinHash scheme {manifest.get(field)!r}; "
                f"this version computes {expected[field]!r} and cannot extend it: delete the "
                "index directory (or use a new one) to rebuild it from the documents"
            )
        if manifest.get(field) != expected[field]:
            hint = " (bands/rows follow from threshold and num_perm when unset)"
            raise ValueError(
                f"dedup index {path} is incompatible with these settings: {field}="
                f"{manifest.get(field)!r} in the index, {field}={expected[field]!r} in the "
                f"settings{hint if field in ('bands', 'rows') else ''}; use the index's settings "
                "or a new index directory"
            )


def write_manifest(path: Path, fingerprint: dict[str, Any], parts: list[dict[str, Any]]) -> None:
    docs = sum(p["rows"] for p in parts)
    updated = datetime.now(UTC).isoformat()
    atomic_write_json(
        Path(path) / MANIFEST, {**fingerprint, "parts": parts, "docs": docs, "updated": updated}
    )


def write_part(path: Path, number: int, columns: dict[str, Any]) -> dict[str, Any]:
    """Write one part file (not yet visible: only a manifest naming it makes it part of the
    index); return its manifest entry."""
    name = f"part-{number:05d}-{uuid.uuid4().hex[:8]}.parquet"
    frame = pl.DataFrame(
        {
            "id": pl.Series(columns["id"], dtype=pl.String),
            "root": pl.Series(columns["root"], dtype=pl.Int64),
            "method": pl.Series(columns["method"], dtype=pl.Int8),
            "similarity": pl.Series(columns["similarity"], dtype=pl.Float64),
            "exact": pl.Series(columns["exact"], dtype=pl.UInt64),
            "lsh": pl.Series(columns["lsh"], dtype=pl.Boolean),
            "sig": pl.Series(columns["sig"]),
            "sketch": _list_series(columns["sk_values"], columns["sk_len"]),
        }
    )
    atomic_write_parquet(frame, Path(path) / name, row_group_size=ROW_GROUP)
    return {"file": name, "rows": frame.height}


def read_part(path: Path, entry: dict[str, Any], num_perm: int) -> dict[str, Any]:
    frame = pl.read_parquet(Path(path) / entry["file"])
    if frame.height != entry["rows"]:
        raise ValueError(
            f"dedup index part {entry['file']} has {frame.height} rows, "
            f"the manifest says {entry['rows']}"
        )
    sig = frame["sig"].to_numpy() if frame.height else np.empty((0, num_perm), np.uint32)
    return {
        "id": frame["id"].to_list(),
        "root": frame["root"].to_numpy(),
        "method": frame["method"].to_numpy(),
        "similarity": frame["similarity"].to_numpy(),
        "exact": frame["exact"].to_numpy(),
        "lsh": frame["lsh"].to_numpy(),
        "sig": np.ascontiguousarray(sig, dtype=np.uint32),
        **list_arrays(frame["sketch"]),
    }


def _list_series(values: np.ndarray, lengths: np.ndarray) -> pl.Series:
    """A List(UInt32) column from concatenated values and per-row lengths (no Python loop)."""
    import pyarrow as pa

    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    array = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, pa.uint32()))
    return pl.Series("sketch", array)


def list_arrays(column: pl.Series) -> dict[str, np.ndarray]:
    """Inverse of ``_list_series``: {"sk_values": concatenated values, "sk_len": lengths}."""
    import pyarrow as pa

    array = column.to_arrow()
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.array([], array.type)
    offsets = np.asarray(array.offsets, dtype=np.int64)
    values = np.asarray(array.values, dtype=np.uint32)[offsets[0] : offsets[-1]]
    return {"sk_values": np.ascontiguousarray(values), "sk_len": np.diff(offsets)}


def remove_orphans(path: Path, parts: list[dict[str, Any]]) -> None:
    """Delete part files no manifest names (left by a writer that crashed before its
    manifest); safe because there is one writer and it has just written the manifest."""
    named = {p["file"] for p in parts}
    for file in Path(path).glob("part-*.parquet"):
        if file.name not in named:
            file.unlink(missing_ok=True)

"""``flywheel dedup-repartition``: rewrite a persistent dedup index's lookup partitions N ways.

    flywheel dedup-repartition INDEX --partitions N

An index's partition count (``dedup.index_partitions``, 32 by default) is fixed when it is
made, and opening it with another count is an error; this command is how an index that has
outgrown its count (or was split too finely for one machine) moves to another without
re-reading any document text. The documents and their decisions (the parts) stay as they
are; their band, exact and id lookup rows are recomputed from the parts (as a fresh index
with N partitions would have written them) and written as new files, one per partition per
group of ``GROUP_DOCS`` documents, so the result is also compact. Then the manifest, with the
new count, replaces the old one atomically, and only then are the old files deleted: a crash
before the manifest leaves the old index (the new files are unnamed orphans, deleted by the
next commit or rerun), a crash after it the new one, and both answer every batch the same.
One writer at a time: not while a dedup adds to the same index. Afterwards continue the index
with ``dedup.index_partitions: N`` (``flywheel dedup --index-partitions N``).

Why its own verb rather than ``dedup-compact --partitions``: compaction keeps the layout and
runs by itself on every commit; repartitioning changes the index's identity (the count the
settings must then name) and is what the count-mismatch error tells a user to run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from flywheel.data.dedup import partitions, store

GROUP_DOCS = 1 << 20  # documents whose lookup rows are held at once: ~9 bands x 18 B each
MAX_PARTITIONS = 65536  # as dedup.index_partitions
_NOT_FINGERPRINT = ("parts", "docs", "updated")  # what write_manifest adds itself


def repartition_index(path: Path, count: int) -> dict[str, int]:
    """Rewrite the lookup partitions of the index at ``path`` ``count`` ways; returns
    {"before": the old count, "after": count, "files": partition files written}."""
    path = Path(path)
    manifest = store.read_manifest(path)
    if manifest is None:
        raise FileNotFoundError(f"no dedup index at {path} (no {store.MANIFEST})")
    have = manifest.get("partitions", partitions.PARTITIONS)
    if not isinstance(count, int) or not 1 <= count <= MAX_PARTITIONS:
        raise ValueError(f"--partitions must be an integer in 1..{MAX_PARTITIONS}, got {count}")
    if count == have:
        raise ValueError(f"dedup index {path} is already partitioned {count} ways: nothing to do")
    parts, written = [], 0
    for group in _groups(manifest["parts"], GROUP_DOCS):
        entries, files = _rewrite_group(path, manifest, group, count)
        parts += entries
        written += files
    fingerprint = {k: v for k, v in manifest.items() if k not in _NOT_FINGERPRINT}
    store.write_manifest(path, {**fingerprint, "partitions": count}, parts)
    partitions.remove_orphans(path, parts)
    for family in partitions.FAMILIES:  # the directories of partitions that are gone
        for p in range(count, have):
            d = path / f"{family}={p}"
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
    return {"before": have, "after": count, "files": written}


def _groups(entries: list[dict[str, Any]], docs: int) -> list[list[tuple[int, dict]]]:
    """The parts as consecutive groups of about ``docs`` documents: [(first order, entry)]."""
    groups: list[list[tuple[int, dict]]] = [[]]
    first, size = 0, 0
    for entry in entries:
        if size >= docs:
            groups.append([])
            size = 0
        groups[-1].append((first, entry))
        first += entry["rows"]
        size += entry["rows"]
    return [g for g in groups if g]


def _rewrite_group(
    path: Path, manifest: dict[str, Any], group: list[tuple[int, dict]], count: int
) -> tuple[list[dict[str, Any]], int]:
    """Write one file per new partition holding the group's lookup rows (in part order, as
    a read of the partition would concatenate them); the group's new manifest entries, the
    first naming those files as merged ones, and how many files were written."""
    layout = (manifest["bands"], manifest["rows"], count)
    rows: dict[str, list[pl.DataFrame]] = {f: [] for f in partitions.FAMILIES}
    for first, entry in group:
        columns = _lookup_columns(path, entry)
        for family, frame in partitions.frames(first, columns, *layout).items():
            rows[family].append(frame)
    frames_of = {family: pl.concat(frames) for family, frames in rows.items()}
    entries = partitions.write_merged(path, [entry for _, entry in group], frames_of)
    return entries, sum(len(entries[0][f]) for f in partitions.FAMILIES)


def _lookup_columns(path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """The columns of a part that its lookup rows are computed from (no sketches)."""
    frame = pl.read_parquet(path / entry["file"], columns=["id", "exact", "lsh", "sig"])
    if frame.height != entry["rows"]:
        raise ValueError(
            f"dedup index part {entry['file']} has {frame.height} rows, "
            f"the manifest says {entry['rows']}"
        )
    sig = frame["sig"].to_numpy() if frame.height else np.empty((0, 1), np.uint32)
    return {
        "id": frame["id"].to_list(),
        "exact": frame["exact"].to_numpy(),
        "lsh": frame["lsh"].to_numpy(),
        "sig": np.ascontiguousarray(sig, dtype=np.uint32),
    }


def register(subparsers: Any) -> None:
    """Add the ``dedup-repartition`` verb to the ``flywheel`` command line."""
    p = subparsers.add_parser(
        "dedup-repartition",
        help="rewrite a dedup index's lookup partitions N ways (same answers)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("index", type=Path, help="the index directory (flywheel dedup --index)")
    p.add_argument("--partitions", type=int, required=True, help="the new partition count")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        done = repartition_index(args.index, args.partitions)
    except (ValueError, FileNotFoundError) as e:
        print(f"flywheel dedup-repartition: {e}", file=sys.stderr)
        return 2
    print(
        f"dedup-repartition: {done['before']} -> {done['after']} partitions, "
        f"{done['files']} files written ({args.index}); continue it with "
        f"dedup.index_partitions: {done['after']} (flywheel dedup --index-partitions "
        f"{done['after']})"
    )
    return 0

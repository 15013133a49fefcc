"""``flywheel dedup-compact``: merge the lookup-partition files of a persistent dedup index.

    flywheel dedup-compact INDEX [--min-files N]

Every commit to an index adds a file to each lookup partition it touches (one per
``flywheel dedup --index`` batch on Ray), and a later batch opens all of a partition's files.
Commits compact by themselves once a partition has ``dedup.compact_files`` files (16 by
default, ``flywheel.data.dedup.partitions.compact``); this command merges every partition
with at least ``--min-files`` (default 2) now, e.g. before a large run. The same rows stay in
the same order, so every answer of the index is unchanged; the manifest is replaced
atomically. One writer at a time: not while a dedup adds to the same index.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flywheel.data.dedup import partitions, store

_NOT_FINGERPRINT = ("parts", "docs", "updated")  # what write_manifest adds itself


def compact_index(path: Path, min_files: int = 2) -> dict[str, dict[str, int]]:
    """Merge each partition of the index at ``path`` holding ``min_files`` files or more;
    returns {"before"/"after": {family: the most files a partition of it has}}."""
    if min_files < 2:
        raise ValueError(
            f"min_files must be >= 2 (a partition of one file is compact), got {min_files}"
        )
    manifest = store.read_manifest(Path(path))
    if manifest is None:
        raise FileNotFoundError(f"no dedup index at {path} (no {store.MANIFEST})")
    before = manifest["parts"]
    after = partitions.compact(Path(path), before, min_files)
    if after is not before:
        fingerprint = {k: v for k, v in manifest.items() if k not in _NOT_FINGERPRINT}
        store.write_manifest(Path(path), fingerprint, after)
        partitions.remove_orphans(Path(path), after)
    return {
        "before": partitions.partition_files(before),
        "after": partitions.partition_files(after),
    }


def register(subparsers: Any) -> None:
    """Add the ``dedup-compact`` verb to the ``flywheel`` command line."""
    p = subparsers.add_parser(
        "dedup-compact",
        help="merge a dedup index's partition files (same answers, fewer files)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("index", type=Path, help="the index directory (flywheel dedup --index)")
    p.add_argument("--min-files", type=int, default=2, help="merge partitions with this many")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        counts = compact_index(args.index, args.min_files)
    except (ValueError, FileNotFoundError) as e:
        print(f"flywheel dedup-compact: {e}", file=sys.stderr)
        return 2
    most = ", ".join(
        f"{f} {counts['before'][f]} -> {counts['after'][f]}" for f in partitions.FAMILIES
    )
    print(f"dedup-compact: most files per partition: {most} ({args.index})")
    return 0

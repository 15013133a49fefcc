"""The dedup index's lookup partitions: what lets a batch read only the part of the index
it touches (the Ray engine's ``flywheel.data.dedup.ray_index``; the local engine writes them
too, so either engine continues an index built by the other).

    <dir>/band=<p>/<part stem>.parquet    order, band, key: the part's LSH documents' bucket
                                          rows whose band key % P == p
    <dir>/exact=<p>/<part stem>.parquet   exact, order: its documents whose exact hash % P == p
    <dir>/ids=<p>/<part stem>.parquet     id, order: its documents whose id hash % P == p

``order`` is a document's arrival order in the index (its part's first order + its row), so
the signature, sketch and decision of a document are found in the one part whose order range
holds it (``read_rows``). P (``partitions`` in the manifest, ``dedup.index_partitions`` when
the index is made) is fixed for the index's life: opening it with another P is an error
(``check_count``). A part's manifest entry lists the partitions it has a file in, per family;
a file no entry names is an orphan of a crashed writer (``remove_orphans``). A bucket
(band, key) lies whole in one band partition, so candidate pairs are found partition by
partition.

Compaction (``compact``). Every commit adds a file to each partition it touches, and a read
opens them all; once a partition has ``dedup.compact_files`` files, the commit merges them
into one ``merged-<hex>.parquet`` (their rows in the same order), which the earliest of those
parts then names (``merged`` in its entry) while the others drop the partition: the same rows,
read in the same order, so the same answers. The merged file is written before the manifest
names it and the old files are deleted after, so a crash at any point leaves a readable index.

    python -c "from flywheel.data.dedup.partitions import *; print(PARTITIONS, FAMILIES)"
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from flywheel.core.shards import atomic_write_parquet
from flywheel.data.dedup import lsh, store
from flywheel.data.dedup.minhash import exact_hash

PARTITIONS = 32  # per family (the default); a one-document batch touches ~12 of 32 band ones
FAMILIES = ("band", "exact", "ids")
SCHEMAS = {
    "band": {"order": pl.Int64, "band": pl.Int16, "key": pl.UInt64},
    "exact": {"exact": pl.UInt64, "order": pl.Int64},
    "ids": {"id": pl.String, "order": pl.Int64},
}


def id_hashes(ids: list[str]) -> np.ndarray:
    return np.fromiter((exact_hash(i) for i in ids), np.uint64, count=len(ids))


def of(hashes: np.ndarray, partitions: int) -> np.ndarray:
    """The partition of each uint64 hash (hashes are uniform: a modulus spreads them)."""
    return (hashes % np.uint64(partitions)).astype(np.int64)


def file(path: Path, family: str, p: int, part_file: str) -> Path:
    return Path(path) / f"{family}={p}" / part_file


def entry_file(path: Path, entry: dict[str, Any], family: str, p: int) -> Path:
    """The file of partition ``p`` of ``family`` a part's entry names: its own, or the merged
    one compaction left it."""
    merged = entry.get("merged", {}).get(f"{family}={p}")
    return file(path, family, p, merged or entry["file"])


def check_count(path: Path, manifest: dict[str, Any], wanted: int) -> None:
    """ValueError when the index at ``path`` is partitioned other than ``wanted`` ways."""
    have = manifest.get("partitions", wanted)
    if have != wanted:
        raise ValueError(
            f"dedup index {path} is partitioned {have} ways and the settings ask for {wanted} "
            f"(dedup.index_partitions): set dedup.index_partitions: {have} to continue it, "
            f"rewrite it with `flywheel dedup-repartition {path} --partitions {wanted}`, or "
            "use a new index directory"
        )


def frames(
    first: int, columns: dict[str, Any], bands: int, rows: int, partitions: int
) -> dict[str, pl.DataFrame]:
    """{family: its lookup rows, with their partition ``p``} of the documents ``columns``
    (``store.write_part``'s columns; id, exact, lsh and sig are read) at orders first,
    first + 1, ... in a ``partitions``-way index."""
    n = len(columns["id"])
    order = np.arange(first, first + n, dtype=np.int64)
    lsh_docs = np.flatnonzero(np.asarray(columns["lsh"], dtype=np.bool_))
    keys = lsh.band_keys(np.asarray(columns["sig"])[lsh_docs], bands, rows)
    out = {
        "band": lsh.bucket_frame(order[lsh_docs], keys),
        "exact": pl.DataFrame({"exact": np.asarray(columns["exact"], np.uint64), "order": order}),
        "ids": pl.DataFrame({"id": pl.Series(columns["id"], dtype=pl.String), "order": order}),
    }
    hashes = {
        "band": out["band"]["key"].to_numpy(),
        "exact": out["exact"]["exact"].to_numpy(),
        "ids": id_hashes(list(columns["id"])),
    }
    return {
        f: frame.with_columns(pl.Series("p", of(hashes[f], partitions))) for f, frame in out.items()
    }


def write_split(path: Path, frame: pl.DataFrame, family: str, name: str) -> list[int]:
    """Write ``frame``'s rows (of ``family``, with a ``p`` column) as one file ``name`` in
    each partition they fall in, in their order; return those partitions, sorted."""
    written = []
    for (p,), rows_p in frame.partition_by("p", as_dict=True, maintain_order=True).items():
        atomic_write_parquet(rows_p.drop("p"), file(path, family, p, name))
        written.append(int(p))
    return sorted(written)


def write_merged(
    path: Path, entries: list[dict[str, Any]], frames_of: dict[str, pl.DataFrame]
) -> list[dict[str, Any]]:
    """Write each family's rows (``frames_of``, with a ``p`` column) for the parts
    ``entries`` as ONE file per partition, named ``merged-<hex>.parquet`` as compaction names
    them (``compact``): the first entry names those files as merged ones and the others no
    partition file. Returns the entries (the manifest names them next)."""
    head = {k: v for k, v in entries[0].items() if k != "merged"} | {"merged": {}}
    name = f"merged-{uuid.uuid4().hex[:12]}.parquet"
    for family in FAMILIES:
        head[family] = write_split(path, frames_of[family], family, name)
        head["merged"].update({f"{family}={p}": name for p in head[family]})
    if not head["merged"]:
        del head["merged"]
    rest = [
        {**{k: v for k, v in e.items() if k != "merged"}, **{f: [] for f in FAMILIES}}
        for e in entries[1:]
    ]
    return [head, *rest]


def write(
    path: Path,
    entry: dict[str, Any],
    first: int,
    columns: dict[str, Any],
    layout: tuple[int, int, int],
) -> dict[str, Any]:
    """Write the partition files of one part (``columns`` as ``store.write_part`` takes them,
    its documents having orders first, first + 1, ...) for ``layout`` = (bands, rows, P);
    return its manifest entry, naming them."""
    written = dict(entry)
    for family, frame in frames(first, columns, *layout).items():
        written[family] = write_split(path, frame, family, entry["file"])
    return written


def read(path: Path, parts: list[dict[str, Any]], family: str, p: int) -> pl.DataFrame:
    """Every row of partition ``p`` of ``family``, over all ``parts``."""
    files = [entry_file(path, e, family, p) for e in parts if p in e[family]]
    if not files:
        return pl.DataFrame(schema=SCHEMAS[family])
    return pl.concat([pl.read_parquet(f) for f in files])


def scan(path: Path, parts: list[dict[str, Any]], family: str, ps: Iterable[int]) -> pl.LazyFrame:
    """The rows of partitions ``ps`` of ``family`` over all ``parts``, as one lazy scan of
    their files (one query for many partitions, not a read and a frame per file)."""
    wanted = set(ps)
    files = [entry_file(path, e, family, p) for e in parts for p in e[family] if p in wanted]
    if not files:
        return pl.LazyFrame(schema=SCHEMAS[family])
    return pl.scan_parquet(files, schema=SCHEMAS[family])


def first_orders(
    path: Path, parts: list[dict[str, Any]], family: str, values: Iterable, partitions: int
) -> dict:
    """{value: its earliest order in the index} for the given ids (family "ids") or exact
    hashes ("exact") that the index holds, reading only their partitions."""
    column = "id" if family == "ids" else "exact"
    values = list(dict.fromkeys(values))
    if not values or not parts:
        return {}
    hashes = id_hashes(values) if family == "ids" else np.asarray(values, dtype=np.uint64)
    wanted = pl.LazyFrame({column: pl.Series(values, dtype=SCHEMAS[family][column])})
    touched = np.unique(of(hashes, partitions)).tolist()
    table = (
        scan(path, parts, family, touched)
        .join(wanted, on=column, how="semi")
        .group_by(column)
        .agg(pl.col("order").min())
        .collect()
    )
    return dict(zip(table[column].to_list(), table["order"].to_list(), strict=True))


def starts(parts: list[dict[str, Any]]) -> np.ndarray:
    """The first order of each part (parts hold consecutive orders, in manifest order)."""
    rows = np.array([e["rows"] for e in parts], dtype=np.int64)
    return np.cumsum(rows) - rows


def read_rows(
    path: Path, parts: list[dict[str, Any]], orders: np.ndarray, columns: list[str]
) -> pl.DataFrame:
    """``columns`` of documents ``orders`` (any order, repeats allowed), aligned with them;
    reads only the row groups of the parts that hold them."""
    orders = np.asarray(orders, dtype=np.int64)
    if orders.size == 0:
        raise ValueError("read_rows needs at least one order")
    first = starts(parts)
    which = np.searchsorted(first, orders, side="right") - 1
    frames = []
    for k in np.unique(which):
        rows = np.unique(orders[which == k]) - first[k]
        frames.append(part_rows(path, parts[k], rows, columns))
        frames[-1] = frames[-1].with_columns(pl.col("row") + int(first[k])).rename({"row": "order"})
    table = pl.concat(frames)
    return pl.DataFrame({"order": orders}).join(
        table, on="order", how="left", maintain_order="left"
    )


def part_rows(path: Path, entry: dict[str, Any], rows: np.ndarray, columns: list[str]):
    """(row, *columns) of rows ``rows`` of one part (aligned with them, repeats allowed),
    reading only the row groups that hold them."""
    pf = pq.ParquetFile(Path(path) / entry["file"])
    sizes = np.array([pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
    group_start = np.cumsum(sizes) - sizes
    groups = np.unique(np.searchsorted(group_start, rows, side="right") - 1)
    table = pl.from_arrow(pf.read_row_groups(groups.tolist(), columns=columns))
    row = np.concatenate([np.arange(group_start[g], group_start[g] + sizes[g]) for g in groups])
    table = table.with_columns(pl.Series("row", row.astype(np.int64)))
    return pl.DataFrame({"row": rows}).join(table, on="row", how="left", maintain_order="left")


def backfill(path: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's parts, with partition files for those written before partitioning (by
    an earlier version): each such part is read once and its files written."""
    layout = (manifest["bands"], manifest["rows"], manifest.get("partitions", PARTITIONS))
    parts, first = [], 0
    for entry in manifest["parts"]:
        if not all(f in entry for f in FAMILIES):
            entry = write(
                path, entry, first, store.read_part(path, entry, manifest["num_perm"]), layout
            )
        parts.append(entry)
        first += entry["rows"]
    return parts


def remove_orphans(path: Path, parts: list[dict[str, Any]]) -> None:
    """Delete partition files no manifest entry names (see ``store.remove_orphans``): those
    of crashed writers, and those a compaction merged."""
    named = {entry_file(path, e, f, p) for e in parts for f in FAMILIES for p in e.get(f, ())}
    for family in FAMILIES:
        for f in Path(path).glob(f"{family}=*/*.parquet"):
            if f not in named:
                f.unlink(missing_ok=True)


def compact(path: Path, parts: list[dict[str, Any]], min_files: int) -> list[dict[str, Any]]:
    """The entries after merging each partition that has ``min_files`` files or more into one
    (written here; the caller writes the manifest, then ``remove_orphans``). Returns
    ``parts`` itself when no partition has that many."""
    holders: dict[tuple[str, int], list[int]] = {}
    for k, entry in enumerate(parts):
        for family in FAMILIES:
            for p in entry.get(family, ()):
                holders.setdefault((family, p), []).append(k)
    todo = {fp: ks for fp, ks in holders.items() if len(ks) >= min_files}
    if not todo:
        return parts
    out = [{**e, **{f: list(e[f]) for f in FAMILIES}, "merged": dict(e.get("merged", {}))}
           for e in parts]  # fmt: skip
    for (family, p), ks in sorted(todo.items()):
        rows = read(path, [parts[k] for k in ks], family, p)
        name = f"merged-{uuid.uuid4().hex[:12]}.parquet"
        atomic_write_parquet(rows, file(path, family, p, name))
        out[ks[0]]["merged"][f"{family}={p}"] = name
        for k in ks[1:]:
            out[k][family].remove(p)
            out[k]["merged"].pop(f"{family}={p}", None)
    return [e if e["merged"] else {k: v for k, v in e.items() if k != "merged"} for e in out]


def partition_files(parts: list[dict[str, Any]]) -> dict[str, int]:
    """{family: the most files any of its partitions has}: what ``compact`` brings down."""
    counts: dict[tuple[str, int], int] = {}
    for entry in parts:
        for family in FAMILIES:
            for p in entry.get(family, ()):
                counts[family, p] = counts.get((family, p), 0) + 1
    return {f: max((n for (g, _), n in counts.items() if g == f), default=0) for f in FAMILIES}

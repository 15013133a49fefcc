"""``flywheel dedup``: deduplicate a JSONL(.gz) or Parquet corpus of {id, text} records.

    flywheel dedup INPUT --output DIR [--threshold T] [--index DIR] [--num-perm N]
                   [--batch-size N]

Writes DIR/kept.parquet (the kept records, every input column) and DIR/duplicates.parquet
(id, duplicate_of in the input's id type, method, similarity). The input is read in batches,
and kept records are spilled per batch and merged by a streaming sink, so memory is bounded by
the batch size plus the index. With --index DIR the corpus is deduplicated against, and then
added to, a persistent index (committed after the outputs are written). Bad input exits 2
with a one-line message and leaves no outputs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ValidationError

from flywheel.core.settings.dedup import DedupSettings
from flywheel.core.shards import atomic_write_parquet
from flywheel.data.dedup.index import DUPLICATES_SCHEMA, DedupIndex


class InputError(Exception):
    """A problem with the user's input, reported as one line and exit code 2."""


def register(subparsers: Any) -> None:
    """Add the ``dedup`` verb to the ``flywheel`` command line."""
    p = subparsers.add_parser(
        "dedup",
        help="deduplicate any JSONL/Parquet corpus (exact + MinHash LSH)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("input", type=Path, help="JSONL (.jsonl, .jsonl.gz) or Parquet with id, text")
    p.add_argument("--output", "-o", type=Path, required=True, help="directory for the outputs")
    p.add_argument("--threshold", type=float, help="Jaccard threshold (default 0.8)")
    p.add_argument("--index", type=Path, help="persistent index directory to dedup against")
    p.add_argument("--num-perm", type=int, help="MinHash permutations (default 128)")
    p.add_argument("--batch-size", type=int, default=10_000, help="records per batch")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        totals = _dedup(args)
    except InputError as e:
        print(f"flywheel dedup: error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    print(
        f"dedup: {totals['docs']} docs, {totals['kept']} kept, {totals['removed']} removed "
        f"({totals['exact_removed']} exact, {totals['minhash_removed']} minhash) in "
        f"{seconds:.2f} s -> {args.output}"
    )
    return 0


def _settings(args: argparse.Namespace) -> DedupSettings:
    overrides = {"threshold": args.threshold, "num_perm": args.num_perm}
    try:
        return DedupSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "settings"
        raise InputError(f"invalid setting {where}: {first['msg']}") from None


def _dedup(args: argparse.Namespace) -> dict[str, int]:
    settings = _settings(args)
    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    if not args.input.is_file():
        raise InputError(f"input file not found: {args.input}")
    try:
        index = DedupIndex.open(args.index, settings) if args.index else DedupIndex(settings)
    except ValueError as e:
        raise InputError(str(e)) from None
    staging = args.output / f".staging-{uuid.uuid4().hex}"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        totals, duplicates = _run_batches(args, index, staging)
        _merge_kept(sorted(staging.glob("kept-*.parquet")), args.output / "kept.parquet")
        dupes = pl.concat(duplicates, how="vertical_relaxed") if duplicates else None
        atomic_write_parquet(
            dupes if dupes is not None else _empty_duplicates(), args.output / "duplicates.parquet"
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    index.commit()
    return totals


def _run_batches(args, index: DedupIndex, staging: Path) -> tuple[dict[str, int], list]:
    keys = ("docs", "kept", "removed", "exact_removed", "minhash_removed")
    totals = dict.fromkeys(keys, 0)
    duplicates: list[pl.DataFrame] = []
    for n, batch in enumerate(_progress(read_batches(args.input, args.batch_size), args.input)):
        ids = batch["id"]
        texts = batch["text"].cast(pl.String).fill_null("").to_list()
        result = index.add(ids, texts)
        keep = pl.Series(result.keep)
        batch.filter(keep).write_parquet(staging / f"kept-{n:06d}.parquet")
        if result.duplicates.height:
            removed = ids.filter(~keep)
            duplicates.append(
                pl.DataFrame(
                    {
                        "id": removed,
                        "duplicate_of": _as_dtype(result.duplicates["duplicate_of"], ids.dtype),
                        "method": result.duplicates["method"],
                        "similarity": result.duplicates["similarity"],
                    }
                )
            )
        for k in keys:
            totals[k] += result.stats[k]
    return totals, duplicates


def _as_dtype(values: pl.Series, dtype: pl.DataType) -> pl.Series:
    """``duplicate_of`` strings back in the input's id type (they name input or index ids)."""
    try:
        return values.cast(dtype)
    except Exception:  # e.g. an index built from string ids, reused with int ids
        return values


def _empty_duplicates() -> pl.DataFrame:
    return pl.DataFrame(schema=DUPLICATES_SCHEMA)


def _merge_kept(parts: list[Path], out: Path) -> None:
    """Concatenate the per-batch kept files into one, streaming, then rename into place."""
    if not parts:
        atomic_write_parquet(pl.DataFrame(schema={"id": pl.String, "text": pl.String}), out)
        return
    tmp = out.with_name(f".tmp-{uuid.uuid4().hex}-{out.name}")
    try:
        frames = [pl.scan_parquet(p) for p in parts]
        pl.concat(frames, how="diagonal_relaxed").sink_parquet(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _progress(batches: Iterator[pl.DataFrame], path: Path) -> Iterator[pl.DataFrame]:
    """Yield the batches, with a tqdm bar (in records) only when stderr is a terminal."""
    if not sys.stderr.isatty():
        yield from batches
        return
    from tqdm import tqdm

    with tqdm(desc=f"dedup {path.name}", unit=" docs", file=sys.stderr) as bar:
        for batch in batches:
            yield batch
            bar.update(batch.height)


def read_batches(path: Path, batch_size: int) -> Iterator[pl.DataFrame]:
    """Batches of records from JSONL (optionally gzip) or Parquet; checks id and text."""
    name = path.name.lower()
    if name.endswith(".parquet") or name.endswith(".pq"):
        yield from _parquet_batches(path, batch_size)
    elif name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")):
        yield from _jsonl_batches(path, batch_size)
    else:
        raise InputError(f"unsupported input {path.name}: expected .jsonl[.gz] or .parquet")


def _parquet_batches(path: Path, batch_size: int) -> Iterator[pl.DataFrame]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as e:
        raise InputError(f"cannot read {path} as Parquet: {e}") from None
    missing = [c for c in ("id", "text") if c not in file.schema_arrow.names]
    if missing:
        raise InputError(
            f"{path} has no {missing[0]!r} column (columns: {', '.join(file.schema_arrow.names)})"
        )
    for batch in file.iter_batches(batch_size=batch_size):
        yield pl.from_arrow(batch)


def _jsonl_batches(path: Path, batch_size: int) -> Iterator[pl.DataFrame]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    records: list[dict[str, Any]] = []
    try:
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    records.append(_record(line, path, lineno))
                if len(records) >= batch_size:
                    yield _frame(records)
                    records = []
    except (OSError, EOFError) as e:  # e.g. a truncated or not-really-gzip file
        raise InputError(f"cannot read {path}: {e}") from None
    if records:
        yield _frame(records)


def _record(line: bytes, path: Path, lineno: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as e:
        raise InputError(f"{path}, line {lineno}: invalid JSON ({e})") from None
    if not isinstance(record, dict):
        raise InputError(
            f"{path}, line {lineno}: expected a JSON object, got {type(record).__name__}"
        )
    for field in ("id", "text"):
        if field not in record:
            raise InputError(f"{path}, line {lineno}: record has no {field!r} field")
    return record


def _frame(records: list[dict[str, Any]]) -> pl.DataFrame:
    # all rows are scanned for the schema, so a column's type does not depend on its first rows
    return pl.from_dicts(records, infer_schema_length=None)

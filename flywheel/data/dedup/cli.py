"""``flywheel dedup``: deduplicate a JSONL(.gz) or Parquet corpus of {id, text} records.

    flywheel dedup INPUT --output DIR [--threshold T] [--strict] [--index DIR] [--num-perm N]
                   [--index-partitions P] [--batch-size N] [--engine local|ray] [--address ADDR]

Writes, into DIR:
  * kept.parquet: the kept records, every input column;
  * duplicates.parquet: id, duplicate_of (in the input's id type), method, similarity;
  * rejected.parquet: the bad records, skipped (path, line or row, reason, detail, raw; see
    ``flywheel.data.dedup.inputs``), so that one bad line does not lose a run;
  * summary.json: the counts printed (docs, kept, removed, rejected by reason, blank lines).

Every valid record is kept or listed as a duplicate: kept + duplicates == docs, and docs +
rejected == the records read. Blank lines are not records (counted as blank_lines).
With --strict the first bad record exits 2 with a one-line message naming file, line and
reason, and nothing is written. Other bad input (a missing or unreadable file, a bad setting)
exits 2 too; an OS error reading or writing (a full disk) exits 1 with one line naming the path.

The input is read in batches, and kept and rejected records are spilled per batch and merged
by a streaming sink, so memory is bounded by the batch size plus the index. The outputs are
written into a staging directory and renamed into DIR only once all are complete, so a failed
run leaves no new file in DIR. With --index DIR the corpus is deduplicated against, and then
added to, a persistent index (committed after the outputs are in place).

With --engine ray the same decisions, hence the same outputs, are computed on a Ray cluster
(``flywheel.data.dedup.ray_engine``): the one at --address ("auto", "ray://host:port",
"host:port"), or one started here. The records are read and checked here as above, spilled
to the staging directory and handed to the cluster batch by batch; the kept and duplicate rows
are then written from the spilled batches in input order. With --index too, each batch is
deduplicated against the index by Ray tasks that read only the index partitions it touches
(``flywheel.data.dedup.ray_index``; the same decisions, and the same index format, as the
local engine's).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import ValidationError

from flywheel.core.artifacts import atomic_write_json, fsync_dir
from flywheel.core.settings.dedup import DedupSettings
from flywheel.core.shards import atomic_write_parquet
from flywheel.data.dedup.index import DedupIndex
from flywheel.data.dedup.inputs import (
    REJECTED_SCHEMA,
    Batch,
    InputError,
    IOFailure,
    ReadCounts,
    io_step,
    os_error_reason,
    read_batches,
)
from flywheel.data.dedup.results import DUPLICATES_SCHEMA

KEPT, DUPLICATES, REJECTED, SUMMARY = (
    "kept.parquet", "duplicates.parquet", "rejected.parquet", "summary.json"
)  # fmt: skip
_COUNTS = ("docs", "kept", "removed", "exact_removed", "minhash_removed")


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
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first bad record (exit 2) instead of writing it to rejected.parquet",
    )
    p.add_argument("--index", type=Path, help="persistent index directory to dedup against")
    p.add_argument("--num-perm", type=int, help="MinHash permutations (default 128)")
    p.add_argument(
        "--index-partitions", type=int, help="hash partitions of a new --index (default 32)"
    )
    p.add_argument("--batch-size", type=int, default=10_000, help="records per batch")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="where dedup runs")
    p.add_argument("--address", help='Ray cluster for --engine ray ("auto", "ray://host:port")')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Deduplicate ``args.input``; print one summary line, or one error line on stderr."""
    try:
        summary = _dedup(args)
    except InputError as e:
        return _fail(f"error: {e}", 2)
    except IOFailure as e:
        return _fail(str(e), 1)
    except (OSError, pl.exceptions.PolarsError) as e:
        # an OS error not wrapped where it happened: still one line, never a traceback
        reason = os_error_reason(e)
        if reason is None and not isinstance(e, OSError):
            raise
        where = getattr(e, "filename", None) or args.output
        return _fail(f"cannot access {where}: {reason or str(e).splitlines()[0]}", 1)
    blank = summary["blank_lines"]
    print(
        f"dedup: {summary['docs']} docs, {summary['kept']} kept, {summary['removed']} removed "
        f"({summary['exact_removed']} exact, {summary['minhash_removed']} minhash), "
        f"{summary['rejected']} rejected, {blank} blank line{'' if blank == 1 else 's'} in "
        f"{summary['seconds']:.2f} s -> {args.output}"
    )
    return 0


def _fail(message: str, code: int) -> int:
    print(f"flywheel dedup: {message}", file=sys.stderr)
    return code


def _settings(args: argparse.Namespace) -> DedupSettings:
    overrides = {
        "threshold": args.threshold,
        "num_perm": args.num_perm,
        "index_partitions": args.index_partitions,
    }
    try:
        return DedupSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "settings"
        raise InputError(f"invalid setting {where}: {first['msg']}") from None


def _dedup(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    settings = _settings(args)
    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    if not args.input.is_file():
        raise InputError(f"input file not found: {args.input}")
    if args.address and args.engine != "ray":
        raise InputError("--address names a Ray cluster: it needs --engine ray")
    index = _open_index(args, settings)
    out = args.output
    staging = out / f".staging-{uuid.uuid4().hex}"
    with io_step("write", out):
        staging.mkdir(parents=True)
    try:
        if args.engine == "ray" and not args.index:
            summary, duplicates = _run_ray(args, settings, staging)
        else:
            summary, duplicates = _run_batches(args, index, staging)
        run_facts = {"input": str(args.input), "strict": args.strict, "engine": args.engine}
        settings_used = {"threshold": settings.threshold, "num_perm": settings.num_perm}
        summary = {**run_facts, **settings_used, **summary}
        _write_outputs(args, staging, duplicates)
        summary["seconds"] = round(time.perf_counter() - started, 3)
        with io_step("write", out / SUMMARY):
            atomic_write_json(staging / SUMMARY, summary)
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if args.index:
        with io_step("write", args.index):
            index.commit()
    return summary


def _open_index(args: argparse.Namespace, settings: DedupSettings) -> Any:
    """The index to deduplicate against: --index's (on Ray with --engine ray), or an empty
    in-memory one."""
    try:
        with io_step("read", args.index):
            if not args.index:
                return DedupIndex(settings)
            if args.engine == "local":
                return DedupIndex.open(args.index, settings)
            from flywheel.core.settings.engine import RaySettings
            from flywheel.data.dedup.ray_engine import RayUnavailable
            from flywheel.data.dedup.ray_index import RayDedupIndex

            try:
                return RayDedupIndex.open(args.index, settings, RaySettings(address=args.address))
            except RayUnavailable as e:
                raise InputError(str(e).splitlines()[0]) from None
    except ValueError as e:  # an incompatible index, a bad --address
        raise InputError(str(e).splitlines()[0]) from None


def _run_batches(
    args: argparse.Namespace, index: Any, staging: Path
) -> tuple[dict[str, Any], list[pl.DataFrame]]:
    """``(the counts, the duplicates)``; kept and rejected records are spilled to ``staging``.

    Write errors name the output a spilled part becomes (DIR/kept.parquet), not the part.
    """
    totals: dict[str, Any] = dict.fromkeys(_COUNTS, 0)
    reasons: Counter[str] = Counter()
    duplicates: list[pl.DataFrame] = []
    counts = ReadCounts()
    batches = read_batches(args.input, args.batch_size, strict=args.strict, counts=counts)
    for n, batch in enumerate(_progress(batches, args.input)):
        _spill_rejected(args, staging, n, batch, reasons)
        if batch.records.height:
            keep, dupes = _dedup_batch(index, batch.records, totals)
            with io_step("write", args.output / KEPT):
                batch.records.filter(keep).write_parquet(staging / f"kept-{n:06d}.parquet")
            if dupes is not None:
                duplicates.append(dupes)
    totals["rejected"] = reasons.total()
    totals["rejected_by_reason"] = dict(sorted(reasons.items()))
    totals["blank_lines"] = counts.blank_lines
    return totals, duplicates


def _spill_rejected(
    args: argparse.Namespace, staging: Path, n: int, batch: Batch, reasons: Counter[str]
) -> None:
    if batch.rejected.height:
        reasons.update(batch.rejected["reason"].to_list())
        with io_step("write", args.output / REJECTED):
            batch.rejected.write_parquet(staging / f"rejected-{n:06d}.parquet")


def _run_ray(
    args: argparse.Namespace, settings: DedupSettings, staging: Path
) -> tuple[dict[str, Any], list[pl.DataFrame]]:
    """``_run_batches`` on Ray: the valid records are spilled as ``input-N.parquet`` while
    their (pos, id, text) go to the cluster; then kept rows and duplicates per spilled batch."""
    from flywheel.core.settings.engine import RaySettings
    from flywheel.data.dedup import ray_engine

    reasons: Counter[str] = Counter()
    counts = ReadCounts()
    spilled: list[tuple[Path, int]] = []  # (file, position of its first record)

    def blocks() -> Iterator[pa.Table]:
        batches = read_batches(args.input, args.batch_size, strict=args.strict, counts=counts)
        start = 0
        for n, batch in enumerate(_progress(batches, args.input)):
            _spill_rejected(args, staging, n, batch, reasons)
            if not batch.records.height:
                continue
            spilled.append((staging / f"input-{n:06d}.parquet", start))
            with io_step("write", args.output / KEPT):
                batch.records.write_parquet(spilled[-1][0])
            pos = np.arange(start, start + batch.records.height, dtype=np.int64)
            ids, texts = (batch.records[c].cast(pl.String) for c in ("id", "text"))
            yield pa.table({"pos": pos, "id": ids.to_arrow(), "text": texts.to_arrow()})
            start += batch.records.height

    try:
        ray_settings = RaySettings(address=args.address)
        gone = ray_engine.dedup_blocks(blocks(), settings, ray_settings)
    except (ValueError, ray_engine.RayUnavailable) as e:  # a bad --address, no cluster
        raise InputError(str(e).splitlines()[0]) from None
    totals: dict[str, Any] = dict.fromkeys(_COUNTS, 0)
    duplicates = [_split_spilled(args, path, start, gone, totals) for path, start in spilled]
    totals["rejected"] = reasons.total()
    totals["rejected_by_reason"] = dict(sorted(reasons.items()))
    totals["blank_lines"] = counts.blank_lines
    return totals, [frame for frame in duplicates if frame is not None]


def _split_spilled(
    args: argparse.Namespace, path: Path, start: int, gone: pa.Table, totals: dict[str, Any]
) -> pl.DataFrame | None:
    """Write the kept rows of one spilled batch; its duplicates, or None; count them."""
    from flywheel.data.dedup import ray_engine

    records = pl.read_parquet(path)
    pos = gone.column("pos").to_numpy()
    lo, hi = np.searchsorted(pos, [start, start + records.height])
    mine = gone.slice(lo, hi - lo)
    keep = np.ones(records.height, dtype=np.bool_)
    keep[mine.column("pos").to_numpy() - start] = False
    with io_step("write", args.output / KEPT):
        records.filter(keep).write_parquet(path.with_name(path.name.replace("input", "kept")))
    path.unlink()
    for k, v in ray_engine.counts(keep, mine).items():
        totals[k] += v
    if not mine.num_rows:
        return None
    found = ray_engine.duplicates_frame(mine)
    return pl.DataFrame(
        {
            "id": records["id"].filter(~keep),
            "duplicate_of": _as_dtype(found["duplicate_of"], records["id"].dtype),
            "method": found["method"],
            "similarity": found["similarity"],
        }
    )


def _dedup_batch(
    index: Any, records: pl.DataFrame, totals: dict[str, Any]
) -> tuple[pl.Series, pl.DataFrame | None]:
    """``(the keep mask, the batch's duplicates or None)``; adds the counts to ``totals``."""
    ids = records["id"]
    result = index.add(ids, records["text"].cast(pl.String).to_list())
    keep = pl.Series(result.keep)
    for k in _COUNTS:
        totals[k] += result.stats[k]
    if not result.duplicates.height:
        return keep, None
    frame = pl.DataFrame(
        {
            "id": ids.filter(~keep),
            "duplicate_of": _as_dtype(result.duplicates["duplicate_of"], ids.dtype),
            "method": result.duplicates["method"],
            "similarity": result.duplicates["similarity"],
        }
    )
    return keep, frame


def _as_dtype(values: pl.Series, dtype: pl.DataType) -> pl.Series:
    """``duplicate_of`` strings back in the input's id type (they name input or index ids)."""
    try:
        return values.cast(dtype)
    except Exception:  # e.g. an index built from string ids, reused with int ids
        return values


def _write_outputs(args: argparse.Namespace, staging: Path, duplicates: list[pl.DataFrame]) -> None:
    """The three Parquet outputs, complete, in ``staging``; errors name their final paths."""
    kept = _merged(sorted(staging.glob("kept-*.parquet")), {"id": pl.String, "text": pl.String})
    rejected = _merged(sorted(staging.glob("rejected-*.parquet")), REJECTED_SCHEMA)
    dupes = (
        pl.concat(duplicates, how="vertical_relaxed")
        if duplicates
        else pl.DataFrame(schema=DUPLICATES_SCHEMA)
    )
    for name, frame in ((KEPT, kept), (DUPLICATES, dupes), (REJECTED, rejected)):
        try:
            with io_step("write", args.output / name):
                atomic_write_parquet(frame, staging / name)
        except pl.exceptions.SchemaError as e:  # e.g. a field an object in one batch, a list later
            raise InputError(
                f"{args.input}: a column's types do not combine across batches: "
                f"{str(e).splitlines()[0]}"
            ) from None


def _merged(parts: list[Path], empty_schema: dict) -> pl.DataFrame | pl.LazyFrame:
    """The per-batch parts as one frame, streamed (lazy) so memory stays bounded."""
    if not parts:
        return pl.DataFrame(schema=empty_schema)
    return pl.concat([pl.scan_parquet(p) for p in parts], how="diagonal_relaxed")


def _publish(staging: Path, out: Path) -> None:
    """Rename the finished outputs into ``out``, summary.json last.

    Renames within one directory do not need space, so after the writes have succeeded a full
    disk cannot leave a mix of this run's outputs and an earlier run's.
    """
    for name in (KEPT, DUPLICATES, REJECTED, SUMMARY):
        with io_step("write", out / name):
            os.replace(staging / name, out / name)
    with io_step("write", out):
        fsync_dir(out)


def _progress(batches: Iterator[Batch], path: Path) -> Iterator[Batch]:
    """Yield the batches, with a tqdm bar (in records) only when stderr is a terminal."""
    if not sys.stderr.isatty():
        yield from batches
        return
    from tqdm import tqdm

    with tqdm(desc=f"dedup {path.name}", unit=" docs", file=sys.stderr) as bar:
        for batch in batches:
            yield batch
            bar.update(batch.size)

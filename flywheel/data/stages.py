"""The document plane's stages, each one call from spec and inputs to committed shard set.

    raw_<source>  --run_filters-->  filtered_documents  --run_dedup-->  deduplicated_shards

A stage is handed the shard sets it reads, ``{product: ShardSet}`` exactly as
``flywheel.core.products`` declares them (anything else is an ``InputError``), writes a new
version with ``ShardWriter`` (atomic; memory bounded by a shard) recording those inputs'
versions, records its facts in the DuckDB catalog and returns a ``StageResult`` whose flat
metadata the Dagster layer (or a CLI) reports. ``run_ingest`` reads a source's files. By hand:

    python -c "from flywheel.core.spec import load_spec; from flywheel.core.products import \
FILTERED, resolve_inputs; from flywheel.data import stages; spec = load_spec('flywheel.yaml'); \
print(stages.run_filters(spec, resolve_inputs(spec, FILTERED)).metadata)"
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from flywheel.core import keys
from flywheel.core import products as P
from flywheel.core.catalog import Catalog
from flywheel.core.shards import ShardSet, ShardWriter, read_current
from flywheel.core.spec import Spec
from flywheel.data.dedup import DedupIndex
from flywheel.data.documents import DROPPED_SCHEMA
from flywheel.data.filters import apply_filters, build_filters, decision_stats
from flywheel.data.ingest import ingest_source, source_files
from flywheel.data.stage_keys import DEDUP_STATS, ingest_key, is_filter_stat, reuse_meta
from flywheel.data.validation import ValidationReport, validate_shardset

FILTERED, DROPPED, DEDUPLICATED = P.FILTERED, P.DROPPED, P.DEDUPLICATED
PREVIEW_ROWS = 5
Inputs = Mapping[str, ShardSet]  # {product: the version to read}, see flywheel.core.products


@dataclass
class StageResult:
    product: str
    shardset: ShardSet
    metadata: dict[str, Any]  # flat numbers and short strings: Dagster plots the numbers
    preview: pl.DataFrame = field(default_factory=pl.DataFrame)

    @property
    def preview_markdown(self) -> str:
        return preview_markdown(self.preview)


def preview_markdown(df: pl.DataFrame, width: int = 100) -> str:
    """A few rows as a markdown table, texts cut to ``width`` characters on one line."""
    if df.is_empty():
        return "_(no rows)_"
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.iter_rows():
        cells = [" ".join(str(v).split())[:width].replace("|", "\\|") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _current(spec: Spec, product: str) -> ShardSet:
    return read_current(spec.product_dir(product))


def _sample(df: pl.DataFrame, *extra: str) -> pl.DataFrame:
    return df.head(PREVIEW_ROWS).select("id", "source", *extra, "text")


# -- ingest ------------------------------------------------------------------------------
def run_ingest(spec: Spec, source_name: str) -> StageResult:
    """Read one source into a new raw shard set; record its documents and quarantine."""
    source = spec.source(source_name)
    product = P.raw(source_name)
    root = spec.product_dir(product)
    key = ingest_key(spec, source_name)
    found = keys.reusable(root, key)
    if found is not None:  # the same files (by content) and settings: nothing to read again
        return _reused_ingest(product, ShardSet(found))
    result = ingest_source(
        source,
        root,
        base_dir=spec.base_dir,
        batch_rows=spec.ingest.batch_rows,
        shard_rows=spec.ingest.shard_rows,
        max_doc_bytes=spec.ingest.max_doc_bytes,
        meta=keys.key_meta(root, key),
        ray=spec.ray if spec.engine == "ray" else None,  # read by Ray tasks: the same set
    )
    shards = result.shardset
    rows = [
        _catalog_rows(df, shards.path / name)
        for name, df in zip(shards.manifest["shards"], shards.iter_batches(), strict=True)
    ]
    documents = pl.concat(rows) if rows else _catalog_rows(shards.read().head(0), shards.path)
    catalog = Catalog.open(spec.catalog)
    catalog.record_source(source_name, documents, shards.aux("quarantine"), shards.version)
    metadata = {
        "rows": result.documents,
        "quarantined": result.quarantined,
        "mb_read": round(result.bytes_read / 1e6, 3),
        "seconds": round(result.seconds, 2),
        **{f"quarantined_{k}": v for k, v in sorted(result.quarantine_by_reason.items())},
        **reuse_meta(shards, reused=False),
    }
    catalog.record_materialization(product, shards.version, spec.fingerprint(), metadata)
    preview = _sample(shards.scan().head(PREVIEW_ROWS).collect())
    return StageResult(product, shards, metadata, preview)


def _reused_ingest(product: str, shards: ShardSet) -> StageResult:
    m = shards.manifest
    by_reason = m.get("quarantine_by_reason", {})
    metadata = {
        "rows": m["documents"],
        "quarantined": m["quarantined"],
        "mb_read": 0.0,  # nothing was read but the files' bytes, to hash them
        "seconds": 0.0,
        **{f"quarantined_{k}": v for k, v in sorted(by_reason.items())},
        **reuse_meta(shards, reused=True),
    }
    return StageResult(
        product, shards, metadata, _sample(shards.scan().head(PREVIEW_ROWS).collect())
    )


def _reused_stage(product: str, shards: ShardSet, names: list[str]) -> StageResult:
    """The current set of a stage whose key is unchanged, with the metadata it was made with
    (``names``: the flat stats its manifest holds)."""
    m = shards.manifest
    metadata = {k: m[k] for k in names if k in m} | {"seconds": 0.0}
    preview = _sample(shards.scan().head(PREVIEW_ROWS).collect())
    return StageResult(product, shards, metadata | reuse_meta(shards, reused=True), preview)


def _catalog_rows(df: pl.DataFrame, shard: Path) -> pl.DataFrame:
    hashes = [hashlib.sha1(t.encode("utf-8", "surrogatepass")).hexdigest() for t in df["text"]]
    return df.select(
        pl.col("id").alias("doc_id"),
        "source",
        "source_id",
        "path",
        "offset",
        pl.Series("content_hash", hashes, dtype=pl.String),
        pl.col("text").str.len_chars().cast(pl.Int64).alias("n_chars"),
        pl.lit(str(shard)).alias("shard"),
    )


# -- quality filters ---------------------------------------------------------------------
def run_filters(spec: Spec, inputs: Inputs) -> StageResult:
    """Apply the spec's filters to every source's raw set (``inputs``), shard by shard."""
    P.check_inputs(FILTERED, spec, inputs)
    key = keys.make_key(P.versions(inputs), {"filters": spec.filters})
    root, dropped_root = spec.product_dir(FILTERED), spec.product_dir(DROPPED)
    found = keys.reusable(root, key)
    if found is not None and keys.reusable(dropped_root, key) is not None:
        kept = ShardSet(found)
        return _reused_stage(FILTERED, kept, [k for k in kept.manifest if is_filter_stat(k)])
    built = keys.key_meta(root, key)
    filters = build_filters(spec.filters)
    raw_sets = [inputs[name] for name in P.inputs(FILTERED, spec)]
    decisions, preview, dropped_preview = [], [], []
    started = time.perf_counter()
    kept_writer = ShardWriter(root, spec.ingest.shard_rows)
    dropped_writer = ShardWriter(dropped_root, spec.ingest.shard_rows)
    with kept_writer, dropped_writer:
        for kept, dropped, judged in _filter_outcomes(spec, raw_sets, filters):
            kept_writer.write(kept)
            dropped_writer.write(dropped.select(list(DROPPED_SCHEMA)))
            decisions.append(judged)
            preview.append(kept.head(PREVIEW_ROWS))
            dropped_preview.append(dropped.head(PREVIEW_ROWS))
        all_decisions = pl.concat(decisions) if decisions else _no_decisions()
        stats = _filter_stats(all_decisions, [f.name for f in filters])
        versions = P.versions(inputs)
        dropped_set = dropped_writer.commit(
            inputs=versions, spec=spec.resolved(), **stats, **keys.key_meta(dropped_root, key)
        )
        kept_writer.write_aux("decisions", all_decisions)
        shards = kept_writer.commit(inputs=versions, spec=spec.resolved(), **stats, **built)
    stats["seconds"] = round(time.perf_counter() - started, 2)
    stats |= reuse_meta(shards, reused=False)
    stats["dropped_path"] = str(dropped_set.path)
    catalog = Catalog.open(spec.catalog)
    catalog.record_filter_decisions(all_decisions, shards.version)
    catalog.record_materialization(FILTERED, shards.version, spec.fingerprint(), stats)
    show = pl.DataFrame()
    if preview:
        kept_sample = _sample(pl.concat(preview)).with_columns(pl.lit("kept").alias("reason"))
        dropped_sample = _sample(pl.concat(dropped_preview), "reason")
        show = pl.concat([kept_sample, dropped_sample], how="diagonal_relaxed")
    return StageResult(FILTERED, shards, stats, show)


def _filter_outcomes(
    spec: Spec, raw_sets: list[ShardSet], filters: list
) -> Iterator[tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]]:
    """(kept, dropped, decisions) of every raw shard in order: judged here, or by Ray tasks
    on the cluster with ``engine: ray`` (``flywheel.data.ray_map``: the same outcomes)."""
    if spec.engine == "ray":
        from flywheel.data.dedup.ray_engine import connect
        from flywheel.data.ray_map import filter_outcomes

        connect(spec.ray)
        yield from filter_outcomes([f for raw in raw_sets for f in raw.files], spec.filters)
        return
    for raw in raw_sets:
        for batch in raw.iter_batches():
            outcome = apply_filters(batch, filters)
            yield outcome.kept, outcome.dropped, outcome.decisions


def _no_decisions() -> pl.DataFrame:
    return pl.DataFrame(
        schema={"id": pl.String, "kept": pl.Boolean, "filter": pl.String, "reason": pl.String}
    )


def _filter_stats(decisions: pl.DataFrame, names: list[str]) -> dict[str, Any]:
    """``decision_stats`` flattened into Dagster metadata: keep rate per filter (of the
    documents a filter saw, the share it passed) and drops per rule."""
    stats = decision_stats(decisions, names)
    flat: dict[str, Any] = {
        "rows_in": stats["documents"],
        "rows": stats["kept"],
        "dropped": stats["dropped"],
        "keep_rate": _rounded(stats["keep_rate"], 0.0),
    }
    for name, f in stats["filters"].items():
        flat[f"dropped_{name}"] = f["dropped"]
        flat[f"keep_rate_{name}"] = _rounded(f["keep_rate"], 1.0)
    rules = {
        f"dropped_{name}.{rule}": count
        for name, f in stats["filters"].items()
        for rule, count in f["rules"].items()
    }
    return flat | dict(sorted(rules.items()))


def _rounded(rate: float | None, empty: float) -> float:
    """A rate for the UI to plot: 4 decimals, ``empty`` when nothing was evaluated."""
    return empty if rate is None else round(rate, 4)


# -- deduplication -----------------------------------------------------------------------
def run_dedup(spec: Spec, inputs: Inputs) -> StageResult:
    """Exact + MinHash LSH dedup of the filtered set against the persistent index, on the
    engine ``spec.engine`` names."""
    P.check_inputs(DEDUPLICATED, spec, inputs)
    filtered = inputs[FILTERED]
    root = spec.product_dir(DEDUPLICATED)
    key = keys.make_key(P.versions(inputs), {"dedup": spec.dedup})
    found = keys.reusable(root, key)
    if found is not None:  # the same filtered set and settings: the index is not touched
        return _reused_stage(DEDUPLICATED, ShardSet(found), list(DEDUP_STATS))
    built = keys.key_meta(root, key)
    index = _open_index(spec)
    duplicates, preview, n_kept = [], [], 0
    totals: Counter[str] = Counter()
    writer = ShardWriter(root, spec.ingest.shard_rows)
    with writer:
        for batch in filtered.iter_batches():
            result = index.add(batch["id"].to_list(), batch["text"].to_list())
            kept = batch.filter(pl.Series(result.keep))
            writer.write(kept)
            n_kept += kept.height
            duplicates.append(result.duplicates)
            preview.append(kept.head(PREVIEW_ROWS))
            totals.update({k: v for k, v in result.stats.items() if isinstance(v, int | float)})
        dupes = pl.concat(duplicates) if duplicates else _no_duplicates()
        metadata = _dedup_stats(filtered.num_rows, n_kept, dupes, totals)
        writer.write_aux("duplicates", dupes)
        shards = writer.commit(inputs=P.versions(inputs), spec=spec.resolved(), **metadata, **built)
        index.commit()
    metadata |= reuse_meta(shards, reused=False)
    catalog = Catalog.open(spec.catalog)
    catalog.record_dedup(_shard_of(shards), dupes, shards.version)
    catalog.record_materialization(DEDUPLICATED, shards.version, spec.fingerprint(), metadata)
    sample = pl.concat(preview).head(PREVIEW_ROWS) if preview else pl.DataFrame()
    return StageResult(DEDUPLICATED, shards, metadata, _sample(sample) if len(sample) else sample)


def _open_index(spec: Spec) -> Any:
    """The persistent dedup index, worked on where ``spec.engine`` says: this process, or Ray
    tasks (on ``spec.ray.address``'s cluster, or one started here) reading only the index
    partitions a batch touches; the same decisions and the same files either way."""
    if spec.engine == "ray":
        from flywheel.data.dedup.ray_index import RayDedupIndex

        return RayDedupIndex.open(spec.dedup_index_dir, spec.dedup, spec.ray)
    return DedupIndex.open(spec.dedup_index_dir, spec.dedup)


def _no_duplicates() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "id": pl.String,
            "duplicate_of": pl.String,
            "method": pl.String,
            "similarity": pl.Float64,
        }
    )


def _shard_of(shards: ShardSet) -> pl.DataFrame:
    frames = [
        pl.read_parquet(f, columns=["id"]).with_columns(pl.lit(str(f)).alias("shard"))
        for f in shards.files
    ]
    return (
        pl.concat(frames) if frames else pl.DataFrame(schema={"id": pl.String, "shard": pl.String})
    )


def _dedup_stats(rows_in: int, rows: int, dupes: pl.DataFrame, totals: Counter) -> dict[str, Any]:
    by_method = Counter(dupes["method"].to_list())
    return {
        "rows_in": rows_in,
        "rows": rows,
        "removed": rows_in - rows,
        "removed_exact": by_method.get("exact", 0),
        "removed_minhash": by_method.get("minhash", 0),
        "dedup_rate": round((rows_in - rows) / rows_in, 4) if rows_in else 0.0,
        "clusters": dupes["duplicate_of"].n_unique() if dupes.height else 0,
        "new_docs": int(totals.get("new_docs", 0)),
        "signature_seconds": round(float(totals.get("signature_seconds", 0.0)), 3),
    }


# -- checks, fingerprints, summary ---------------------------------------------------------
def check_product(spec: Spec, product: str) -> ValidationReport:
    """Run the product's Great Expectations suite on its current shard set."""
    v = spec.validation
    return validate_shardset(
        _current(spec, product),
        product,
        min_chars=v.min_chars,
        max_chars=v.max_chars,
        min_rows=v.min_rows,
        unique_text=product == DEDUPLICATED,
    )


def source_fingerprint(spec: Spec, source_name: str) -> str:
    """Changes when the source's input changes: its files' names, sizes and mtimes, or for
    the built-in source the installed distributions and Python version."""
    source = spec.source(source_name)
    if source.kind == "python_env":
        dists = sorted(
            f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
        )
        parts = [sys.version, *dists]
    else:
        parts = [
            f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
            for p in source_files(source, spec.base_dir)
        ]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()

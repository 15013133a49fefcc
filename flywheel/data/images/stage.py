"""The image plane's stages over shard sets: ingested records -> filtered -> deduplicated.

    python -c "from flywheel.data.images.stage import *; help(dedup_image_set)"

Each takes the shard set(s) it reads and plain arguments (settings, output roots, an optional
catalog) and returns what it published, as the document stages in ``flywheel.data.stages`` do,
so a Dagster asset is a call plus its metadata. The outputs match the document plane's:
``filter_image_set`` publishes the kept records (``decisions`` aux table) and the dropped ones
with their reason; ``dedup_image_set`` publishes the kept records with a ``duplicates`` aux
table (id, duplicate_of, method, similarity) and, given a catalog, records kept rows, the
duplicates and so the clusters (``Catalog.image_cluster``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from flywheel.core.catalog import Catalog
from flywheel.core.settings.images import ImageFilterSettings
from flywheel.core.shards import ShardSet, ShardWriter
from flywheel.data.dedup.results import DUPLICATES_SCHEMA
from flywheel.data.images.dedup import ImageDedupIndex
from flywheel.data.images.filters import build_image_filters, filter_images

DECISIONS_SCHEMA = {"id": pl.String, "kept": pl.Boolean, "filter": pl.String, "reason": pl.String}


def filter_image_set(
    records: list[ShardSet],
    root: Path,
    dropped_root: Path,
    settings: ImageFilterSettings,
    *,
    shard_rows: int = 50_000,
    catalog: Catalog | None = None,
    inputs: Mapping[str, str] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> tuple[ShardSet, ShardSet, dict[str, Any]]:
    """Filter every record of ``records`` (one set per source): (kept set, dropped set, stats).
    ``inputs``: what both sets record they read (default: each set's directory and version);
    ``meta``: more manifest fields for both (a build key)."""
    filters = build_image_filters(settings)
    decisions: list[pl.DataFrame] = []
    inputs = dict(inputs or {str(r.path.parent): r.version for r in records})
    extra = {"filters": settings.model_dump(mode="json"), **dict(meta or {})}
    with ShardWriter(root, shard_rows) as kept_w, ShardWriter(dropped_root, shard_rows) as drop_w:
        for shardset in records:
            kept_w.write(shardset.scan().head(0).collect())  # the schema, even if all drop
            for batch in shardset.iter_batches():
                outcome = filter_images(batch, filters)
                kept_w.write(outcome.kept)
                drop_w.write(outcome.dropped)
                decisions.append(outcome.decisions)
        judged = pl.concat(decisions) if decisions else pl.DataFrame(schema=DECISIONS_SCHEMA)
        stats = _filter_stats(judged)
        dropped = drop_w.commit(inputs=inputs, **extra, **stats)
        kept_w.write_aux("decisions", judged)
        kept = kept_w.commit(inputs=inputs, **extra, **stats)
    if catalog is not None:
        catalog.record_image_filter_decisions(judged, kept.version)
    return kept, dropped, stats


def _filter_stats(decisions: pl.DataFrame) -> dict[str, Any]:
    dropped = decisions.filter(~pl.col("kept"))
    by_filter = Counter(dropped["filter"].to_list())
    return {
        "rows_in": decisions.height,
        "rows": decisions.height - dropped.height,
        "dropped": dropped.height,
        "dropped_by_filter": dict(sorted(by_filter.items())),
    }


def dedup_image_set(
    records: ShardSet,
    root: Path,
    index: ImageDedupIndex,
    *,
    shard_rows: int = 50_000,
    catalog: Catalog | None = None,
    inputs: Mapping[str, str] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> tuple[ShardSet, pl.DataFrame, dict[str, Any]]:
    """Deduplicate ``records`` against ``index`` (which they join; committed after the set is
    published): (kept set, duplicates, stats). ``inputs``: what the set records it read
    (default: ``records``' directory and version); ``meta``: more manifest fields."""
    duplicates: list[pl.DataFrame] = []
    totals: Counter[str] = Counter()
    with ShardWriter(root, shard_rows) as writer:
        writer.write(records.scan().head(0).collect())
        for batch in records.iter_batches():
            result = index.add(batch["id"].to_list(), batch["image_id"].to_list(), batch["phash"])
            writer.write(batch.filter(pl.Series(result.keep)))
            duplicates.append(result.duplicates)
            totals.update({k: v for k, v in result.stats.items() if isinstance(v, int | float)})
        dupes = pl.concat(duplicates) if duplicates else pl.DataFrame(schema=DUPLICATES_SCHEMA)
        by_method = Counter(dupes["method"].to_list())
        stats = {
            "rows_in": records.num_rows,
            "rows": records.num_rows - dupes.height,
            "removed": dupes.height,
            "removed_exact": by_method.get("exact", 0),
            "removed_phash": by_method.get("phash", 0),
            "clusters": dupes["duplicate_of"].n_unique() if dupes.height else 0,
            "candidate_pairs": int(totals["candidate_pairs"]),
            "verified_pairs": int(totals["verified_pairs"]),
        }
        writer.write_aux("duplicates", dupes)
        kept = writer.commit(
            inputs=dict(inputs or {str(records.path.parent): records.version}),
            dedup=index.settings.model_dump(mode="json"),
            **dict(meta or {}),
            **stats,
        )
        index.commit()
    if catalog is not None:
        shard_of = [
            pl.read_parquet(f, columns=["id"]).with_columns(pl.lit(str(f)).alias("shard"))
            for f in kept.files
        ]
        frame = (
            pl.concat(shard_of)
            if shard_of
            else pl.DataFrame(schema={"id": pl.String, "shard": pl.String})
        )
        catalog.record_image_dedup(frame, dupes, kept.version)
    return kept, dupes, stats

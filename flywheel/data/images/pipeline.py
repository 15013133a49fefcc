"""The image plane's stages run from the spec: each image source's raw set, then curation.

    raw_images_<source>  --run_image_curation-->  curated_images
                            (filter_image_set -> filtered_images + dropped_images,
                             dedup_image_set against <data_dir>/image_dedup_index)

By hand (as the Dagster assets call them):

    python -c "from flywheel.core.spec import load_spec; from flywheel.core import products \
as P; from flywheel.data.images import pipeline; spec = load_spec('flywheel.yaml'); \
[pipeline.run_image_ingest(spec, s.name) for s in spec.images.sources]; \
print(pipeline.run_image_curation(spec, P.resolve_inputs(spec, P.CURATED_IMAGES)).metadata)"

As ``flywheel.data.stages`` does for documents: each stage is handed its inputs, keys its
output (``flywheel.core.keys``) and reuses the current version when the key is unchanged,
records its rows in the catalog and returns a ``StageResult`` with flat metadata. Images go
once into ``spec.image_store_dir``; shards hold their ``image_id``. The preview is a gallery
of thumbnails (``flywheel.data.images.thumbnails``) instead of a text table.

Keys: a raw set is keyed by its source's settings, ``images.decode`` and the bytes of the
Parquet files or tar shards it reads. Images a Parquet file references by path are not hashed
(reading them is the ingest itself): after changing one in place, change the source's
settings or delete the raw set's CURRENT to ingest again. ``curated_images`` is keyed by the
raw sets' versions, ``images.filters`` and ``images.dedup``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from flywheel.core import keys
from flywheel.core import products as P
from flywheel.core.catalog import Catalog
from flywheel.core.settings.images import VisualCountingSource
from flywheel.core.shards import ShardSet
from flywheel.core.spec import Spec
from flywheel.data.images.dedup import ImageDedupIndex
from flywheel.data.images.ingest import ingest_images
from flywheel.data.images.stage import dedup_image_set, filter_image_set
from flywheel.data.images.store import ImageStore
from flywheel.data.images.thumbnails import SAMPLES, GalleryItem, gallery_markdown
from flywheel.data.ingest.readers import resolve_files
from flywheel.data.stage_keys import reuse_meta
from flywheel.data.stages import StageResult


@dataclass
class ImageStageResult(StageResult):
    """A stage result whose preview is a markdown gallery of thumbnails."""

    gallery: str = ""

    @property
    def preview_markdown(self) -> str:
        return self.gallery


# -- raw_images_<source> ---------------------------------------------------------------------
def image_ingest_key(spec: Spec, source_name: str) -> dict[str, str]:
    """What decides an image source's raw set: its settings, the decode caps, its files."""
    source = spec.images.source(source_name)
    sections = {"source": source, "decode": spec.images.decode}
    if isinstance(source, VisualCountingSource):  # no files: the renderer's code decides
        code = {"renderer": keys.module_digest("flywheel.data.visual:render_shapes")}
        return keys.make_key(spec=sections, code=code)
    h = hashlib.sha256()
    for path in resolve_files(source.name, source.path, spec.base_dir):
        with open(path, "rb") as f:  # streamed: tar shards can be gigabytes
            h.update(f"{path}\0{hashlib.file_digest(f, 'sha256').hexdigest()}\n".encode())
    return keys.make_key(spec=sections, data={"source files": "sha256:" + h.hexdigest()})


def run_image_ingest(spec: Spec, source_name: str) -> ImageStageResult:
    """Read one image source into a new raw set (images into the store); record its rows and
    quarantine in the catalog. An unchanged source reuses the current set."""
    source = spec.images.source(source_name)
    product = P.raw_images(source_name)
    root, store = spec.product_dir(product), ImageStore(spec.image_store_dir)
    key = image_ingest_key(spec, source_name)
    found = keys.reusable(root, key)
    if found is not None:
        shards = ShardSet(found)
        return _result(product, shards, _ingest_metadata(shards, reused=True), store)
    result = ingest_images(
        source,
        root,
        store,
        base_dir=spec.base_dir,
        settings=spec.images.decode,
        batch_rows=spec.images.batch_rows,
        shard_rows=spec.ingest.shard_rows,
        meta=keys.key_meta(root, key),
    )
    shards = result.shardset
    catalog = Catalog.open(spec.catalog)
    catalog.record_image_source(
        source_name, shards.read(), shards.aux("quarantine"), shards.version
    )
    metadata = _ingest_metadata(shards, reused=False)
    catalog.record_materialization(product, shards.version, spec.fingerprint(), metadata)
    return _result(product, shards, metadata, store)


def _ingest_metadata(shards: ShardSet, reused: bool) -> dict[str, Any]:
    m = shards.manifest
    return {
        "rows": m["records"],
        "quarantined": m["quarantined"],
        **{f"quarantined_{k}": v for k, v in sorted(m["quarantine_by_reason"].items())},
        "images_stored": 0 if reused else m["images_stored"],
        "mb_read": 0.0 if reused else round(m["bytes_read"] / 1e6, 3),
        "files": m["files_read"],
        "seconds": 0.0 if reused else m["ingest_seconds"],
        **reuse_meta(shards, reused),
    }


# -- curated_images --------------------------------------------------------------------------
def run_image_curation(spec: Spec, inputs: Mapping[str, ShardSet]) -> ImageStageResult:
    """Filter every raw image set (``inputs``, as ``flywheel.core.products`` declares them),
    then remove exact and pHash near-duplicates against the persistent image index."""
    P.check_inputs(P.CURATED_IMAGES, spec, inputs)
    root, store = spec.product_dir(P.CURATED_IMAGES), ImageStore(spec.image_store_dir)
    versions = P.versions(inputs)
    settings = spec.images
    key = keys.make_key(versions, {"filters": settings.filters, "dedup": settings.dedup})
    found = keys.reusable(root, key)
    if found is not None:  # the same raw sets and settings: the index is not touched
        shards = ShardSet(found)
        metadata = _curation_metadata(shards.manifest) | {"seconds": 0.0}
        return _result(P.CURATED_IMAGES, shards, metadata | reuse_meta(shards, True), store)
    started = time.perf_counter()
    catalog = Catalog.open(spec.catalog)
    built = keys.key_meta(root, key)
    kept, dropped, fstats = filter_image_set(
        [inputs[name] for name in P.inputs(P.CURATED_IMAGES, spec)],
        spec.product_dir(P.FILTERED_IMAGES),
        spec.product_dir(P.DROPPED_IMAGES),
        settings.filters,
        shard_rows=spec.ingest.shard_rows,
        catalog=catalog,
        inputs=versions,
        meta=built,
    )
    # the filter's counts go into the curated set's manifest under their own names (its
    # rows_in/rows are the dedup step's), so a reused version reports them too
    filtered = {"records_in": fstats["rows_in"], "rows_after_filters": fstats["rows"]}
    filtered |= {f"dropped_{k}": v for k, v in fstats["dropped_by_filter"].items()}
    shards, _, _ = dedup_image_set(
        kept,
        root,
        ImageDedupIndex.open(spec.image_dedup_index_dir, settings.dedup),
        shard_rows=spec.ingest.shard_rows,
        catalog=catalog,
        inputs=versions,
        meta={
            **built,
            **filtered,
            "filtered_version": kept.version,
            "dropped_path": str(dropped.path),
        },
    )
    metadata = _curation_metadata(shards.manifest)
    metadata["seconds"] = round(time.perf_counter() - started, 2)
    metadata |= reuse_meta(shards, reused=False)
    catalog.record_materialization(P.CURATED_IMAGES, shards.version, spec.fingerprint(), metadata)
    return _result(P.CURATED_IMAGES, shards, metadata, store)


def _curation_metadata(m: Mapping[str, Any]) -> dict[str, Any]:
    """A curated set's flat metadata, from its manifest: records in, what the filters dropped
    (by filter), what dedup removed (exact, pHash), what is left."""
    records_in = m["records_in"]
    dropped = {k: v for k, v in m.items() if k.startswith("dropped_") and k != "dropped_path"}
    return {
        "rows_in": records_in,
        "dropped": records_in - m["rows_after_filters"],
        **dict(sorted(dropped.items())),
        "rows_after_filters": m["rows_after_filters"],
        "removed_exact": m["removed_exact"],
        "removed_phash": m["removed_phash"],
        "rows": m["rows"],
        "keep_rate": round(m["rows"] / records_in, 4) if records_in else 0.0,
        "clusters": m["clusters"],
        "candidate_pairs": m["candidate_pairs"],
        "verified_pairs": m["verified_pairs"],
        "dropped_path": m["dropped_path"],
    }


# -- the preview -----------------------------------------------------------------------------
def _result(
    product: str, shards: ShardSet, metadata: dict[str, Any], store: ImageStore
) -> ImageStageResult:
    sample = shards.scan().head(SAMPLES).collect()
    preview = sample.select("id", "source", "width", "height", "text") if sample.height else sample
    return ImageStageResult(product, shards, metadata, preview, gallery=gallery(sample, store))


def gallery(rows: pl.DataFrame, store: ImageStore, title: str | None = None) -> str:
    """Thumbnails of ``rows`` (``image_id``, ``text``, ``id``), their images read from
    ``store``."""
    items = [
        GalleryItem(store.read_bytes(r["image_id"]), r["text"], r["id"])
        for r in rows.head(SAMPLES).iter_rows(named=True)
    ]
    return gallery_markdown(items, title=title)

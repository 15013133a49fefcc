"""The image plane through Dagster: raw_images_<source> per source, then curated_images.

Materializes the image assets of a spec with one Parquet and one WebDataset source, built
here from rendered pictures with bad records and planted duplicates, and checks what the UI
and the catalog get: counts, quarantine reasons, the thumbnail gallery, the catalog's rows.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from PIL import Image

from definitions import build_definitions
from flywheel.core import products as P
from flywheel.core.catalog import Catalog
from flywheel.core.shards import read_current
from flywheel.core.spec import load_spec
from flywheel.data.images import ImageStore
from tests.conftest import write_spec
from tests.data.images.conftest import encode, picture, write_tar

IMAGE_KEYS = ["raw_images_pairs", "raw_images_web", "curated_images"]


@pytest.fixture
def image_spec(tmp_path: Path) -> Path:
    garden = picture(1)
    png = encode(picture(4))
    pl.DataFrame(
        {
            "id": [f"p{i}" for i in range(8)],
            "image": [
                encode(garden),
                encode(garden, "JPEG", quality=60),  # a near-duplicate of p0 (pHash)
                encode(picture(2)),
                b"not an image at all",  # undecodable_image
                png[: len(png) // 2],  # truncated_image
                encode(picture(5)),
                encode(picture(6).resize((200, 40))),  # 5:1, dropped by aspect_ratio
                encode(picture(7).resize((20, 20))),  # dropped by resolution
            ],
            "text": ["a sunny garden", "the garden, as JPEG", "a harbour at dusk", "junk",
                     "cut short", None, "a thin strip", "a tiny square"],
        }
    ).write_parquet(tmp_path / "pairs.parquet")  # fmt: skip
    write_tar(tmp_path / "web-0000.tar", [
        ("w/0.png", encode(garden)), ("w/0.txt", b"the garden, same pixels"),  # exact dup
        ("w/1.png", encode(picture(8))), ("w/1.txt", b"a meadow"),
        ("w/2.png", b"garbage"), ("w/2.txt", b"no picture"),  # undecodable_image
        ("w/3.png", encode(picture(9))),  # no caption: missing_text
    ])  # fmt: skip
    return write_spec(
        tmp_path,
        """
        data_dir: data
        catalog: catalog.duckdb
        images:
          sources:
            - {name: pairs, kind: image_parquet, path: pairs.parquet}
            - {name: web, kind: webdataset, path: "web-*.tar"}
        """,
    )


def _materialize(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, dict]:
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(k) for k in IMAGE_KEYS]
    )
    assert result.success
    return {
        e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }


def _thumbnails(markdown: str) -> list[Image.Image]:
    uris = re.findall(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    return [Image.open(io.BytesIO(base64.b64decode(u))) for u in uris]


@pytest.mark.integration
def test_image_assets_materialize_with_counts_gallery_and_catalog(image_spec: Path) -> None:
    defs = build_definitions(str(image_spec))
    graph = defs.resolve_asset_graph()
    parents = graph.get(dg.AssetKey("curated_images")).parent_keys
    assert {k.to_user_string() for k in parents} == {"raw_images_pairs", "raw_images_web"}
    instance = dg.DagsterInstance.ephemeral()
    meta = _materialize(defs, instance)
    assert set(meta) == set(IMAGE_KEYS)

    pairs, web, curated = (meta[k] for k in IMAGE_KEYS)
    assert (pairs["rows"], pairs["quarantined"]) == (5, 3)
    assert pairs["quarantined_undecodable_image"] == 1
    assert pairs["quarantined_truncated_image"] == 1 and pairs["quarantined_missing_text"] == 1
    assert (web["rows"], web["quarantined"]) == (2, 2)
    assert web["quarantined_undecodable_image"] == 1 and web["quarantined_missing_text"] == 1
    assert (curated["rows_in"], curated["dropped"], curated["rows_after_filters"]) == (7, 2, 5)
    assert curated["dropped_aspect_ratio"] == 1 and curated["dropped_resolution"] == 1
    assert (curated["removed_exact"], curated["removed_phash"], curated["rows"]) == (1, 1, 3)
    assert curated["reused"] is False

    thumbs = _thumbnails(curated["preview"])
    assert len(thumbs) == 3 and all(t.format == "PNG" for t in thumbs)
    assert all(max(t.size) <= 64 for t in thumbs) and thumbs[0].size == (64, 48)
    assert "a sunny garden" in curated["preview"] and "a meadow" in curated["preview"]
    assert len(_thumbnails(pairs["preview"])) == 5

    spec = load_spec(image_spec)
    kept = read_current(spec.product_dir(P.CURATED_IMAGES)).read()
    assert sorted(kept["source_id"]) == ["p0", "p2", "w/1"]
    assert "image" not in kept.columns  # shards reference the store by image_id
    store = ImageStore(spec.image_store_dir)
    assert all(store.verify(i) for i in kept["image_id"])
    assert len(list(store.ids())) == 6  # w/0 has p0's pixels: stored once

    catalog = Catalog.open(spec.catalog)
    counts = catalog.query(
        "SELECT source, count(*) AS n FROM image_records GROUP BY source ORDER BY source"
    )
    assert counts.rows() == [("pairs", 5), ("web", 2)]
    reasons = catalog.query(
        "SELECT source, reason FROM quarantine WHERE source IN ('pairs', 'web') ORDER BY 1, 2"
    ).rows()
    assert reasons == [
        ("pairs", "missing_text"), ("pairs", "truncated_image"), ("pairs", "undecodable_image"),
        ("web", "missing_text"), ("web", "undecodable_image"),
    ]  # fmt: skip
    p0 = kept.filter(pl.col("source_id") == "p0")["id"][0]
    cluster = catalog.image_cluster(p0)
    methods = catalog.query("SELECT method FROM image_duplicates ORDER BY method")["method"]
    assert len(cluster) == 3 and methods.to_list() == ["exact", "phash"]
    dropped = catalog.query("SELECT count(*) AS n FROM image_filter_decisions WHERE NOT kept")
    assert dropped["n"][0] == 2

    again = _materialize(defs, instance)  # nothing changed: every version is reused
    assert all(again[k]["reused"] for k in IMAGE_KEYS)
    assert again["curated_images"]["rows"] == 3 and again["curated_images"]["removed_phash"] == 1

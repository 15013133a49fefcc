"""Filters with reasons, and ingest -> filter -> dedup over shard sets into the catalog."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import polars as pl
import pytest

from flywheel.core.catalog import Catalog
from flywheel.core.settings.filters import C4Settings, FilterSettings
from flywheel.core.settings.images import ImageFilterSettings, WebDatasetSource
from flywheel.data.images import (
    ImageDedupIndex,
    ImageStore,
    build_image_filters,
    dedup_image_set,
    filter_image_set,
    filter_images,
    ingest_images,
)
from tests.data.images.conftest import encode, picture


def _rows(*records: tuple[int, int, str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [f"r{i}" for i in range(len(records))],
            "width": [r[0] for r in records],
            "height": [r[1] for r in records],
            "text": [r[2] for r in records],
        }
    )


def test_filters_drop_with_reasons_first_rejection_wins() -> None:
    rows = _rows(
        (256, 192, "a dog on a beach"),
        (20, 200, "tiny"),  # resolution first, though its aspect ratio fails too
        (1000, 200, "a long banner"),
        (300, 300, "ok"),
        (300, 300, "x" * 3000),
    )
    outcome = filter_images(rows, build_image_filters(ImageFilterSettings()))
    assert outcome.kept["id"].to_list() == ["r0"]
    assert outcome.dropped["reason"].to_list() == [
        "resolution: min_side 20 < 32 (20x200)",
        "aspect_ratio: aspect_ratio 5.00 > 4.0 (1000x200)",
        "caption_length: chars 2 < 3",
        "caption_length: chars 3000 > 2000",
    ]
    assert outcome.decisions.height == 5
    assert outcome.stats["filters"]["resolution"]["dropped"] == 1


def test_document_filters_run_on_captions_when_enabled() -> None:
    settings = ImageFilterSettings(
        caption_filters=FilterSettings.model_validate(
            {"gopher_quality": {"enabled": False}, "gopher_repetition": {"enabled": False},
             "c4": C4Settings(enabled=True, min_sentences=1).model_dump()}
        )
    )  # fmt: skip
    filters = build_image_filters(settings)
    assert [f.name for f in filters][-1] == "caption_c4"
    rows = _rows((256, 256, "A dog runs on the beach."), (256, 256, "lorem ipsum dolor sit amet"))
    outcome = filter_images(rows, filters)
    assert outcome.decisions["filter"].to_list() == [None, "caption_c4"]


def test_settings_errors_name_the_fields() -> None:
    with pytest.raises(ValueError, match="min_side .* must be <= max_side"):
        ImageFilterSettings(min_side=100, max_side=50)


def test_ingest_filter_dedup_publish_sets_and_catalog_clusters(tmp_path: Path) -> None:
    base = picture(1)
    members = [
        ("0.png", encode(base), "a sunny garden"),
        ("1.jpg", encode(base, "JPEG", quality=60), "the same garden, as JPEG"),
        ("2.png", encode(picture(2)), "another scene"),
        ("3.png", encode(picture(3).resize((200, 40))), "a thin strip"),
        ("4.webp", encode(base, "WEBP", lossless=True), "the garden, same pixels"),
    ]
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for name, payload, caption in members:
            for member, data in ((name, payload), (name.split(".")[0] + ".txt", caption.encode())):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    catalog = Catalog.open(tmp_path / "catalog.duckdb")
    store = ImageStore(tmp_path / "images")
    source = WebDatasetSource(name="web", path="s.tar")
    raw = ingest_images(source, tmp_path / "raw", store, base_dir=tmp_path).shardset
    assert raw.num_rows == 5 and len(list(store.ids())) == 4  # the WebP is not stored again
    kept, dropped, stats = filter_image_set(
        [raw], tmp_path / "filtered", tmp_path / "dropped", ImageFilterSettings(), catalog=catalog
    )
    assert stats["dropped_by_filter"] == {"aspect_ratio": 1}
    assert dropped.read()["reason"][0].startswith("aspect_ratio")
    final, dupes, dstats = dedup_image_set(
        kept, tmp_path / "dedup", ImageDedupIndex.open(tmp_path / "index"), catalog=catalog
    )
    ids = raw.read()["id"].to_list()
    assert final.read()["id"].to_list() == [ids[0], ids[2]]
    assert sorted(zip(dupes["id"], dupes["method"], strict=True)) == sorted(
        [(ids[1], "phash"), (ids[4], "exact")]
    )
    assert dstats["clusters"] == 1 and final.aux("duplicates").height == 2
    assert catalog.image_cluster(ids[0]) == [ids[0], *sorted([ids[1], ids[4]])]
    decisions = catalog.query("SELECT count(*) AS n FROM image_filter_decisions")["n"][0]
    assert decisions == 5

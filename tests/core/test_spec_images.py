"""The spec's ``images`` section: empty by default, validated with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.core import products as P
from flywheel.core.settings.images import ImageParquetSource, WebDatasetSource
from flywheel.core.spec import SpecError, load_spec
from tests.conftest import write_spec


def test_images_are_empty_by_default_and_add_no_products(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, "name: plain\n"))
    assert spec.images.sources == [] and spec.images.dedup.threshold == 10
    assert not any("image" in p for p in P.products(spec))


def test_an_images_section_parses_into_sources_settings_and_products(tmp_path: Path) -> None:
    spec = load_spec(
        write_spec(
            tmp_path,
            """
            images:
              sources:
                - {name: pairs, kind: image_parquet, path: "data/*.parquet", image_field: jpg}
                - {name: web, kind: webdataset, path: shards/web-000.tar}
              decode: {max_pixels: 1000000}
              filters: {min_side: 64}
              dedup: {threshold: 8}
            """,
        ),
        ["images.filters.max_aspect_ratio=2.5"],
    )
    pairs, web = spec.images.sources
    assert isinstance(pairs, ImageParquetSource) and pairs.image_field == "jpg"
    assert isinstance(web, WebDatasetSource) and spec.images.source("web") is web
    assert spec.images.decode.max_pixels == 1_000_000 and spec.images.filters.min_side == 64
    assert spec.images.filters.max_aspect_ratio == 2.5 and spec.images.dedup.threshold == 8
    assert P.inputs(P.CURATED_IMAGES, spec) == ["raw_images_pairs", "raw_images_web"]
    assert P.products(spec)[1:3] == ["raw_images_pairs", "raw_images_web"]
    assert P.CURATED_IMAGES in P.products(spec) and P.is_shard_set("raw_images_web")
    assert spec.image_store_dir == spec.data_dir / "image_store"
    with pytest.raises(KeyError, match=r"no image source named 'nope' \(images.sources: pairs"):
        spec.images.source("nope")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "images: {sources: [{name: a, kind: webdataset, path: x.tar, colour: red}]}",
            "images.sources[0].colour: unknown key",
        ),
        (
            "images: {sources: [{name: a, kind: tiff, path: x.tif}]}",
            "images.sources[0]: Input tag 'tiff' found using 'kind' does not match",
        ),
        (
            "images: {sources: [{name: a, kind: webdataset, path: x.tar},"
            " {name: a, kind: image_parquet, path: y.parquet}]}",
            "images.sources: image source names must be unique; repeated: a",
        ),
        ("images: {filters: {min_side: 100, max_side: 50}}", "images.filters: min_side (100)"),
        ("images: {dedup: {threshold: 20, bands: 1}}", "images.dedup: threshold=20 with bands=1"),
        ("images: {decode: {max_pixels: 0}}", "images.decode.max_pixels: Input should be greater"),
        ("images: {batch_rows: 0}", "images.batch_rows: Input should be greater than or equal"),
        (
            "sources: [{name: images_web, kind: jsonl, path: a.jsonl}]\n"
            "images: {sources: [{name: web, kind: webdataset, path: w.tar}]}",
            "raw_images_web would be both the text source images_web's raw product",
        ),
    ],
)
def test_bad_image_settings_name_the_key(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(SpecError) as exc:
        load_spec(write_spec(tmp_path, body + "\n"))
    assert message in str(exc.value)

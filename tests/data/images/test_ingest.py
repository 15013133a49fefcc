"""Image-text sources (Parquet, WebDataset) into records, the store and quarantine."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from flywheel.core.settings.images import (
    ImageDecodeSettings,
    ImageParquetSource,
    WebDatasetSource,
    parse_image_source,
)
from flywheel.data.images import IMAGE_RECORD_SCHEMA, ImageStore, ingest_images
from flywheel.data.images.decode import decode_image
from flywheel.data.ingest.readers import SourceReadError
from tests.data.images.conftest import encode, picture, write_tar


def _reasons(result) -> dict[str, int]:
    return result.quarantine_by_reason


def test_webdataset_samples_become_records_and_bad_ones_are_quarantined(tmp_path: Path) -> None:
    good = encode(picture(1))
    jpeg = encode(picture(2), "JPEG")
    write_tar(tmp_path / "shard-0000.tar", [
        ("s/0001.png", good), ("s/0001.txt", b"a red ball"), ("s/0001.json", b"{}"),
        ("s/0002.jpg", jpeg), ("s/0002.txt", "caf\u00e9 sign".encode()),
        ("s/0003.png", good[: len(good) // 2]), ("s/0003.txt", b"cut short"),
        ("s/0004.txt", b"no image here"),
        ("s/0005.png", encode(picture(3))),
        ("s/0006.png", b"garbage bytes"), ("s/0006.txt", b"not an image"),
        ("s/0001.png", encode(picture(4))), ("s/0001.txt", b"same key again"),
        ("s/0007.png", encode(picture(5))), ("s/0007.txt", b"   "),
    ])  # fmt: skip
    store = ImageStore(tmp_path / "images")
    source = WebDatasetSource(name="web", path="shard-*.tar")
    result = ingest_images(source, tmp_path / "raw", store, base_dir=tmp_path, batch_rows=3)
    assert _reasons(result) == {
        "truncated_image": 1, "missing_image": 1, "missing_text": 1, "undecodable_image": 1,
        "duplicate_id": 1, "empty_text": 1,
    }  # fmt: skip
    assert result.records == 2 and result.records + result.quarantined == 8
    assert result.skipped == {"member_.json": 1}
    rows = result.shardset.read()
    assert dict(rows.schema) == IMAGE_RECORD_SCHEMA
    assert rows["source_id"].to_list() == ["s/0001", "s/0002"]
    assert rows["text"].to_list() == ["a red ball", "caf\u00e9 sign"]
    assert rows["format"].to_list() == ["PNG", "JPEG"]
    assert rows["image_id"][0] == decode_image(good).image_id
    assert all(image_id in store for image_id in rows["image_id"])
    quarantine = result.shardset.aux("quarantine")
    assert quarantine.height == 6 and set(quarantine["source"]) == {"web"}
    assert quarantine.filter(pl.col("reason") == "truncated_image")["raw"][0].startswith(
        "b'\\x89PNG"
    )


def test_a_tar_cut_short_stops_the_run(tmp_path: Path) -> None:
    shard = write_tar(tmp_path / "a.tar", [(f"{i}.png", encode(picture(i))) for i in range(3)])
    shard.write_bytes(shard.read_bytes()[:3000])
    source = WebDatasetSource(name="web", path="a.tar")
    with pytest.raises(SourceReadError, match="a.tar"):
        ingest_images(source, tmp_path / "raw", ImageStore(tmp_path / "im"), base_dir=tmp_path)
    assert not (tmp_path / "raw" / "CURRENT").exists()


def test_parquet_images_as_bytes_paths_and_structs(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "b.png").write_bytes(encode(picture(2)))
    a = encode(picture(1))
    frame = pl.DataFrame(
        {
            "id": ["a", "b", "c", "d", "e", "f", "g"],
            "image": [
                {"bytes": a, "path": None},
                {"bytes": None, "path": "pics/b.png"},
                {"bytes": None, "path": "pics/absent.png"},
                {"bytes": None, "path": None},
                {"bytes": encode(Image.new("I;16", (40, 40))), "path": None},
                {"bytes": encode(picture(1), "WEBP", lossless=True), "path": None},
                {"bytes": a, "path": None},
            ],
            "caption": ["one", "two", "three", "four", "five", "six", None],
        }
    )
    frame.write_parquet(tmp_path / "pairs.parquet")
    store = ImageStore(tmp_path / "images")
    source = ImageParquetSource(name="pq", path="pairs.parquet", text_field="caption")
    result = ingest_images(source, tmp_path / "raw", store, base_dir=tmp_path)
    assert _reasons(result) == {
        "image_not_found": 1,
        "missing_image": 1,
        "unsupported_mode": 1,
        "missing_text": 1,
    }
    rows = result.shardset.read()
    assert rows["source_id"].to_list() == ["a", "b", "f"]
    # "f" is a lossless re-encode of "a": the same image id, stored once
    assert rows["image_id"][0] == rows["image_id"][2]
    assert result.images_stored == 2 and len(list(store.ids())) == 2
    assert store.verify(rows["image_id"][0])
    assert store.read_bytes(rows["image_id"][0]) == a  # the first encoding seen, as given


def test_parquet_image_paths_as_strings_resolve_against_image_root(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.png").write_bytes(encode(picture(3)))
    (tmp_path / "data").mkdir()
    pl.DataFrame({"image": ["x.png"], "text": ["a caption"]}).write_parquet(
        tmp_path / "data" / "p.parquet"
    )
    source = ImageParquetSource(name="pq", path="data/*.parquet", image_root=str(tmp_path / "imgs"))
    result = ingest_images(source, tmp_path / "raw", ImageStore(tmp_path / "s"), base_dir=tmp_path)
    assert result.records == 1 and result.shardset.read()["source_id"][0] is None


def test_a_parquet_file_without_the_image_column_is_an_error(tmp_path: Path) -> None:
    pl.DataFrame({"text": ["x"]}).write_parquet(tmp_path / "p.parquet")
    source = ImageParquetSource(name="pq", path="p.parquet")
    with pytest.raises(SourceReadError, match="no column 'image'"):
        ingest_images(source, tmp_path / "raw", ImageStore(tmp_path / "s"), base_dir=tmp_path)


def test_oversized_images_are_quarantined_unread(tmp_path: Path) -> None:
    write_tar(tmp_path / "a.tar", [("k.png", encode(picture(1))), ("k.txt", b"big")])
    source = WebDatasetSource(name="web", path="a.tar")
    result = ingest_images(
        source, tmp_path / "raw", ImageStore(tmp_path / "s"), base_dir=tmp_path,
        settings=ImageDecodeSettings(max_bytes=1000),
    )  # fmt: skip
    assert _reasons(result) == {"too_large": 1}


def test_source_specs_validate_with_clear_errors() -> None:
    spec = parse_image_source({"kind": "webdataset", "name": "laion", "path": "*.tar"})
    assert isinstance(spec, WebDatasetSource)
    with pytest.raises(ValueError, match="image_feild"):
        parse_image_source({"kind": "image_parquet", "name": "x", "path": "p", "image_feild": "i"})

"""Thumbnails as inline PNG data: URIs, and the markdown gallery the Dagster UI shows."""

from __future__ import annotations

import base64
import io
import re

import pytest
from PIL import Image

from flywheel.data.images.thumbnails import GalleryItem, data_uri, gallery_markdown, thumbnail
from tests.data.images.conftest import encode, picture


def _decode_uri(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :])))


def test_thumbnails_keep_the_aspect_never_upscale_and_are_png() -> None:
    wide = thumbnail(picture(1, (300, 100)))
    assert wide.size == (64, 21) and wide.mode == "RGB"
    small = picture(2, (40, 30))
    assert thumbnail(small).size == (40, 30)  # never scaled up
    assert thumbnail(encode(picture(3, (50, 200)), "JPEG"), max_side=32).size == (8, 32)
    rgba = Image.new("RGBA", (100, 100), (255, 0, 0, 128))
    assert thumbnail(rgba).mode == "RGBA" and rgba.size == (100, 100)  # the input is untouched
    png = _decode_uri(data_uri(picture(4, (256, 192))))
    assert png.format == "PNG" and png.size == (64, 48)
    with pytest.raises(ValueError, match="max_side must be >= 1"):
        thumbnail(small, max_side=0)


def test_gallery_is_a_table_of_inline_images_with_escaped_captions() -> None:
    items = [
        GalleryItem(encode(picture(i)), f"caption {i} | with [brackets]", f"src-{i}")
        for i in range(8)
    ]
    md = gallery_markdown(items, title="curated_images")
    lines = md.splitlines()
    assert lines[0] == "**curated\\_images**" and lines[2] == "| image | caption | id |"
    rows = lines[4:]
    assert len(rows) == 6  # SAMPLES by default
    uris = re.findall(r"\]\((data:image/png;base64,[A-Za-z0-9+/=]+)\)", md)
    assert len(uris) == 6 and all(max(_decode_uri(u).size) <= 64 for u in uris)
    assert r"caption 0 \| with \[brackets\]" in rows[0] and "| src-0 |" in rows[0]
    assert all(row.count(" | ") == 2 for row in rows)  # the escaped | does not split a cell
    assert len(md) < 100_000
    assert gallery_markdown([]) == "_(no images)_"
    long = gallery_markdown([GalleryItem(picture(1), "word " * 100)], limit=1)
    assert "…" in long and len(long.splitlines()[2]) < 200 + len(data_uri(picture(1)))

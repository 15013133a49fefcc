"""Small PNG thumbnails inline in markdown: a preview of image samples that needs no server.

    python -c "from flywheel.data.images.thumbnails import *; help(gallery_markdown)"

``gallery_markdown`` renders a few images as a markdown table, each cell an
``![alt](data:image/png;base64,...)`` of the image downscaled to at most ``max_side`` pixels,
beside its caption. The Dagster layer shows it as an asset's ``MetadataValue.md``: the UI's
markdown renderer (``MarkdownWithPlugins`` in dagster-ui, react-markdown 8 + rehype-sanitize)
adds ``data`` to the protocols a ``src`` may use and sets no image URL transform, and the
webserver's CSP has no ``img-src``, so the images render inline (checked on Dagster 1.13 by
clicking the preview's "Show Markdown" in headless chromium over the DevTools protocol: each
``<img>`` decoded at its thumbnail's size). Kept small on purpose: the
markdown is stored with every materialization in the event log; a 64 px PNG of a photo is
~5-12 KB of base64, so 6 of them are well under 100 KB.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable
from dataclasses import dataclass

from PIL import Image

MAX_SIDE = 64  # pixels on a thumbnail's longer side
SAMPLES = 6  # images a gallery shows by default
CAPTION_CHARS = 80  # a caption is cut to this many characters in the table


@dataclass(frozen=True)
class GalleryItem:
    """One image of a gallery: the picture (decoded, or encoded bytes), its caption, and a
    short label (an id) shown under it."""

    image: Image.Image | bytes
    caption: str
    label: str = ""


def thumbnail(image: Image.Image | bytes, max_side: int = MAX_SIDE) -> Image.Image:
    """A copy of ``image`` scaled down (aspect kept, never up) to at most ``max_side`` on its
    longer side, in RGB or RGBA."""
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    if isinstance(image, bytes | bytearray):
        image = Image.open(io.BytesIO(image))
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    small = image.convert("RGBA" if has_alpha else "RGB")  # a copy, never the caller's
    small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return small


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True)
    return out.getvalue()


def data_uri(image: Image.Image | bytes, max_side: int = MAX_SIDE) -> str:
    """``data:image/png;base64,...`` of ``image``'s thumbnail."""
    encoded = base64.b64encode(png_bytes(thumbnail(image, max_side))).decode("ascii")
    return f"data:image/png;base64,{encoded}"


def _cell(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width``, safe inside a markdown table cell."""
    flat = " ".join(str(text).split())
    if len(flat) > width:
        flat = flat[: width - 1] + "…"
    for char in "\\|[]*_`<>":
        flat = flat.replace(char, "\\" + char)
    return flat


def gallery_markdown(
    items: Iterable[GalleryItem],
    *,
    max_side: int = MAX_SIDE,
    limit: int = SAMPLES,
    title: str | None = None,
) -> str:
    """The first ``limit`` items as a markdown table: thumbnail, caption, label."""
    rows = []
    for item in list(items)[:limit]:
        alt = _cell(item.caption, 40)
        image = f"![{alt}]({data_uri(item.image, max_side)})"
        rows.append(f"| {image} | {_cell(item.caption, CAPTION_CHARS)} | {_cell(item.label, 40)} |")
    if not rows:
        return "_(no images)_"
    head = [f"**{_cell(title, 200)}**", ""] if title else []
    return "\n".join([*head, "| image | caption | id |", "|---|---|---|", *rows])

"""Filters of image-text records, with reasons: resolution, aspect ratio, caption rules.

    python -c "from flywheel.data.images import *; print(filter_images.__doc__)"

An image filter is ``keep(record) -> (kept, reason)`` on a record's fields (``width``,
``height``, ``text``); the document filters (``flywheel.data.filters``: Gopher, C4) run on
captions through ``CaptionFilter``, named ``caption_<name>``. ``filter_images`` applies them in
order, first rejection wins, and returns text filtering's ``FilterOutcome`` (kept rows,
dropped rows with ``reason`` "<filter>: <why>", one decision per row, per-filter stats), so the
catalog and reports treat image and text decisions alike.
"""

from __future__ import annotations

from typing import Any, Protocol

import polars as pl

from flywheel.core.settings.images import ImageFilterSettings
from flywheel.data.filters.apply import (
    Filter,
    FilterOutcome,
    build_filters,
    decision_stats,
    split_judged,
)


class ImageFilter(Protocol):
    """A record filter: ``keep(record)`` returns ``(True, "")`` or ``(False, reason)``."""

    name: str

    def keep(self, record: dict[str, Any]) -> tuple[bool, str]: ...


class ResolutionFilter:
    """Shorter side >= min_side and longer side <= max_side."""

    name = "resolution"

    def __init__(self, min_side: int, max_side: int):
        self.min_side, self.max_side = min_side, max_side

    def keep(self, record: dict[str, Any]) -> tuple[bool, str]:
        w, h = record["width"], record["height"]
        if min(w, h) < self.min_side:
            return False, f"min_side {min(w, h)} < {self.min_side} ({w}x{h})"
        if max(w, h) > self.max_side:
            return False, f"max_side {max(w, h)} > {self.max_side} ({w}x{h})"
        return True, ""


class AspectRatioFilter:
    """Longer side / shorter side <= max_aspect_ratio."""

    name = "aspect_ratio"

    def __init__(self, max_ratio: float):
        self.max_ratio = max_ratio

    def keep(self, record: dict[str, Any]) -> tuple[bool, str]:
        w, h = record["width"], record["height"]
        ratio = max(w, h) / max(min(w, h), 1)
        if ratio > self.max_ratio:
            return False, f"aspect_ratio {ratio:.2f} > {self.max_ratio} ({w}x{h})"
        return True, ""


class CaptionLengthFilter:
    """Caption characters (stripped) and words within bounds."""

    name = "caption_length"

    def __init__(self, min_chars: int, max_chars: int, min_words: int):
        self.min_chars, self.max_chars, self.min_words = min_chars, max_chars, min_words

    def keep(self, record: dict[str, Any]) -> tuple[bool, str]:
        text = (record.get("text") or "").strip()
        if len(text) < self.min_chars:
            return False, f"chars {len(text)} < {self.min_chars}"
        if len(text) > self.max_chars:
            return False, f"chars {len(text)} > {self.max_chars}"
        words = len(text.split())
        if words < self.min_words:
            return False, f"words {words} < {self.min_words}"
        return True, ""


class CaptionFilter:
    """A document filter (``flywheel.data.filters``) applied to the caption."""

    def __init__(self, inner: Filter):
        self.inner = inner
        self.name = f"caption_{inner.name}"

    def keep(self, record: dict[str, Any]) -> tuple[bool, str]:
        return self.inner.keep(record.get("text") or "")


def build_image_filters(settings: ImageFilterSettings) -> list[ImageFilter]:
    """The filters in a fixed order, cheapest first (so a record's reason is reproducible):
    resolution, aspect ratio, caption length, then the enabled document filters on captions."""
    s = settings
    filters: list[ImageFilter] = [
        ResolutionFilter(s.min_side, s.max_side),
        AspectRatioFilter(s.max_aspect_ratio),
        CaptionLengthFilter(s.min_caption_chars, s.max_caption_chars, s.min_caption_words),
    ]
    filters += [CaptionFilter(f) for f in build_filters(s.caption_filters)]
    return filters


def filter_images(df: pl.DataFrame, filters: list[ImageFilter]) -> FilterOutcome:
    """Run ``filters`` in order on each record of ``df`` (needs id, width, height, text)."""
    missing = {"id", "width", "height", "text"} - set(df.columns)
    if missing:
        raise ValueError(f"filter_images needs columns {sorted(missing)}; got {df.columns}")
    names = [f.name for f in filters]
    if len(set(names)) != len(names):
        raise ValueError(f"filter names must be unique, got {names}")
    by: list[str | None] = []
    why: list[str | None] = []
    for record in df.select("width", "height", "text").iter_rows(named=True):
        rejected_by, reason = _first_rejection(filters, record)
        by.append(rejected_by)
        why.append(reason)
    filter_col = pl.Series("filter", by, dtype=pl.String)
    reason_col = pl.Series("reason", why, dtype=pl.String)
    kept, dropped, decisions = split_judged(df, filter_col, reason_col)
    return FilterOutcome(kept, dropped, decisions, decision_stats(decisions, names))


def _first_rejection(filters: list[ImageFilter], record: dict[str, Any]):
    for f in filters:
        ok, reason = f.keep(record)
        if not ok:
            return f.name, reason or "rejected"  # a drop always carries a reason
    return None, None

"""Running filters over a document frame: first rejecting filter wins, every row accounted for.

``build_filters`` turns ``FilterSettings`` into the enabled filters in a fixed order;
``apply_filters`` splits a document frame into kept and dropped rows, one decision per input
row, and per-filter statistics. Per-document work is plain Python over the ``text`` column.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import polars as pl

from flywheel.core.settings.filters import FilterSettings
from flywheel.data.filters.c4 import C4Filter
from flywheel.data.filters.gopher import GopherQualityFilter, GopherRepetitionFilter


@runtime_checkable
class Filter(Protocol):
    """A document filter: ``keep(text)`` returns ``(True, "")`` or ``(False, reason)``."""

    name: str

    def keep(self, text: str) -> tuple[bool, str]: ...


@dataclass
class FilterOutcome:
    """What ``apply_filters`` made of a frame.

    ``kept``: the input rows that passed, input columns. ``dropped``: the others, plus ``reason``
    as ``"<filter>: <why>"``. ``decisions``: one row per input row, in input order: ``id``,
    ``kept``, ``filter`` and ``reason`` (the why alone; both null when kept). ``stats``: see
    ``apply_filters``.
    """

    kept: pl.DataFrame
    dropped: pl.DataFrame
    decisions: pl.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


def build_filters(settings: FilterSettings) -> list[Filter]:
    """The enabled filter families, cheapest and most general first: Gopher quality, Gopher
    repetition, C4. The order is fixed so that a document's reason is reproducible."""
    filters: list[Filter] = []
    if settings.gopher_quality.enabled:
        filters.append(GopherQualityFilter(settings.gopher_quality))
    if settings.gopher_repetition.enabled:
        filters.append(GopherRepetitionFilter(settings.gopher_repetition))
    if settings.c4.enabled:
        filters.append(C4Filter(settings.c4))
    return filters


def apply_filters(df: pl.DataFrame, filters: list[Filter]) -> FilterOutcome:
    """Run ``filters`` in order on each document of ``df`` (needs ``id`` and ``text``).

    A document is dropped by the first filter that rejects it and later filters never see it.
    A null text is filtered as the empty string. ``stats`` holds ``documents``, ``kept``,
    ``dropped``, ``keep_rate`` (None for an empty frame) and ``filters``: per filter name,
    ``evaluated``, ``kept``, ``dropped``, ``keep_rate`` (kept / evaluated, None when it
    evaluated nothing) and ``rules`` (drops per rule, the reason's first word).
    """
    missing = {"id", "text"} - set(df.columns)
    if missing:
        raise ValueError(f"apply_filters needs columns {sorted(missing)}; got {df.columns}")
    names = [f.name for f in filters]
    if len(set(names)) != len(names):
        raise ValueError(f"filter names must be unique, got {names}")

    by: list[str | None] = []
    why: list[str | None] = []
    for text in df.get_column("text").to_list():
        rejected_by, reason = _first_rejection(filters, text or "")
        by.append(rejected_by)
        why.append(reason)

    filter_col = pl.Series("filter", by, dtype=pl.String)
    reason_col = pl.Series("reason", why, dtype=pl.String)
    kept, dropped, decisions = split_judged(df, filter_col, reason_col)
    stats = _stats(names, by, why)
    return FilterOutcome(kept=kept, dropped=dropped, decisions=decisions, stats=stats)


def split_judged(
    df: pl.DataFrame, filter_col: pl.Series, reason_col: pl.Series
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """``df``'s rows judged (the rejecting filter and its why per row, null when kept) as
    kept rows, dropped rows with ``reason`` "<filter>: <why>", and one decision per row."""
    kept_mask = filter_col.is_null().alias("kept")
    decisions = pl.DataFrame(
        [df.get_column("id"), kept_mask, filter_col.alias("filter"), reason_col.alias("reason")]
    )
    dropped = df.filter(~kept_mask).with_columns(
        reason=pl.concat_str(
            filter_col.filter(~kept_mask), pl.lit(": "), reason_col.filter(~kept_mask)
        )
    )
    return df.filter(kept_mask), dropped, decisions


def decision_stats(decisions: pl.DataFrame, names: list[str]) -> dict[str, Any]:
    """``apply_filters``' stats, recomputed from decisions gathered over many batches."""
    return _stats(names, decisions["filter"].to_list(), decisions["reason"].to_list())


def _first_rejection(filters: list[Filter], text: str) -> tuple[str | None, str | None]:
    for f in filters:
        ok, reason = f.keep(text)
        if not ok:
            return f.name, reason or "rejected"  # a drop always carries a reason
    return None, None


def _rate(kept: int, total: int) -> float | None:
    return kept / total if total else None


def _stats(names: list[str], by: list[str | None], why: list[str | None]) -> dict[str, Any]:
    dropped_by = Counter(b for b in by if b is not None)
    rules: dict[str, Counter[str]] = {name: Counter() for name in names}
    for b, reason in zip(by, why, strict=True):
        if b is not None:
            rules[b][(reason or "").split(" ", 1)[0]] += 1
    per_filter: dict[str, dict[str, Any]] = {}
    remaining = len(by)  # documents that reach a filter are those no earlier filter dropped
    for name in names:
        dropped = dropped_by[name]
        per_filter[name] = {
            "evaluated": remaining,
            "kept": remaining - dropped,
            "dropped": dropped,
            "keep_rate": _rate(remaining - dropped, remaining),
            "rules": dict(rules[name].most_common()),
        }
        remaining -= dropped
    return {
        "documents": len(by),
        "kept": remaining,
        "dropped": len(by) - remaining,
        "keep_rate": _rate(remaining, len(by)),
        "filters": per_filter,
    }

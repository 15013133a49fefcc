"""Heuristic quality filters in the spirit of Gopher (Rae et al. 2021) and C4 (Raffel et al. 2020).

Each filter is an object with ``name`` and ``keep(text) -> (kept, reason)``. ``FilterSettings``
(the spec's ``filters:`` section) configures three families -- ``gopher_quality``,
``gopher_repetition`` and ``c4`` -- and ``build_filters`` makes the enabled ones;
``apply_filters`` runs them over a document frame and accounts for every row.

    settings = FilterSettings()
    outcome = apply_filters(documents, build_filters(settings))
    outcome.kept, outcome.dropped, outcome.decisions, outcome.stats
"""

from flywheel.core.settings.filters import (
    C4Settings,
    FilterSettings,
    GopherQualitySettings,
    GopherRepetitionSettings,
)
from flywheel.data.filters.apply import (
    Filter,
    FilterOutcome,
    apply_filters,
    build_filters,
    decision_stats,
)
from flywheel.data.filters.c4 import C4Filter
from flywheel.data.filters.gopher import GopherQualityFilter, GopherRepetitionFilter

__all__ = [
    "C4Filter",
    "C4Settings",
    "Filter",
    "FilterOutcome",
    "FilterSettings",
    "GopherQualityFilter",
    "GopherQualitySettings",
    "GopherRepetitionFilter",
    "GopherRepetitionSettings",
    "apply_filters",
    "decision_stats",
    "build_filters",
]

"""The one resource every flywheel asset uses: the spec, loaded once per process."""

from __future__ import annotations

from functools import cache

import dagster as dg

from flywheel.core.spec import Spec, load_spec


@cache
def _load(path: str, overrides: tuple[str, ...]) -> Spec:
    return load_spec(path or None, list(overrides))


class FlywheelResource(dg.ConfigurableResource):
    """Where the flywheel's spec lives; assets read their part of it from here."""

    spec_path: str = ""  # empty: $FLYWHEEL_SPEC, else flywheel.yaml
    overrides: list[str] = []  # typed key.path=value overrides, e.g. "dedup.threshold=0.9"

    def spec(self) -> Spec:
        return _load(self.spec_path, tuple(self.overrides))

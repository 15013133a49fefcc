"""Finished cycle runs, failed or succeeded: written by the Dagster run-status sensors, read
by ``flywheel report`` (``flywheel.loop.status``).

    python -c "from flywheel.core.spec import load_spec; from flywheel.loop.runs import \
failures; print(failures(load_spec()))"

A failure of cycle c is state until a later run of cycle c succeeds; then it is history
(``failures(include_resolved=True)``). The record is the catalog's ``cycle_runs`` table
(``flywheel.core.loop_record``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from flywheel.core.catalog import Catalog, CycleRun
from flywheel.core.loop_record import FAILED, SUCCEEDED
from flywheel.core.spec import Spec


def record_failure(
    spec: Spec,
    cycle: int | str | None,
    run_id: str,
    message: str,
    at: datetime | None = None,
    step: str | None = None,
) -> CycleRun:
    """Record that run ``run_id`` of cycle ``cycle`` failed at ``at`` (default: now), in
    ``step`` (the asset that failed) with error ``message``."""
    run = CycleRun(run_id, _cycle(cycle), FAILED, message[:2000], _now(at), step)
    return _record(spec, run)


def record_success(
    spec: Spec, cycle: int | str | None, run_id: str, at: datetime | None = None
) -> CycleRun:
    """Record that run ``run_id`` of cycle ``cycle`` succeeded: it resolves the cycle's
    failures recorded before ``at``."""
    return _record(spec, CycleRun(run_id, _cycle(cycle), SUCCEEDED, "", _now(at)))


def failures(spec: Spec, include_resolved: bool = False) -> list[CycleRun]:
    """Failed cycle runs, oldest first: those after which no run of the same cycle
    succeeded, or (``include_resolved``) every failure ever recorded."""
    runs = Catalog.open(spec.catalog).cycle_runs(unresolved_failures=not include_resolved)
    return [r for r in runs if r.status == FAILED]


def _record(spec: Spec, run: CycleRun) -> CycleRun:
    Catalog.open(spec.catalog).record_cycle_run(run)
    return run


def _cycle(cycle: int | str | None) -> int | None:
    return None if cycle is None else int(cycle)  # Dagster's partition key is a string


def _now(at: datetime | None) -> datetime:
    return at or datetime.now(UTC)

"""The loop's record in the catalog: one promotion decision per cycle, every finished run.

    flywheel report            the decisions, the champion and the unresolved failed runs

This is the only place the loop's state lives (``Catalog`` mixes ``LoopRecord`` in; get it
with ``Catalog.open``). ``cycles`` holds one ``Decision`` per cycle, replaced if the cycle is
decided again for a new candidate, with the versions it read (``inputs``: the cycle's eval,
its candidate, the champion before); the champion is derived from it, never stored apart.
``cycle_runs`` holds every finished Dagster run of a cycle (``CycleRun``), failed or
succeeded, by run id: history stays queryable, and a failure is resolved once a later run of
the same cycle succeeded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

LOOP_SCHEMA = """
CREATE TABLE IF NOT EXISTS cycles (
    cycle BIGINT PRIMARY KEY, candidate VARCHAR, metric VARCHAR, value DOUBLE,
    champion_before VARCHAR, champion_value DOUBLE, promoted BOOLEAN, reason VARCHAR,
    decided_at TIMESTAMP, candidate_path VARCHAR, inputs JSON
);
ALTER TABLE cycles ADD COLUMN IF NOT EXISTS candidate_path VARCHAR;
ALTER TABLE cycles ADD COLUMN IF NOT EXISTS inputs JSON;
ALTER TABLE cycles ADD COLUMN IF NOT EXISTS build_key JSON;
ALTER TABLE cycles ADD COLUMN IF NOT EXISTS build_changes JSON;
CREATE TABLE IF NOT EXISTS cycle_runs (
    run_id VARCHAR PRIMARY KEY, cycle BIGINT, status VARCHAR, message VARCHAR,
    finished_at TIMESTAMP
);
ALTER TABLE cycle_runs ADD COLUMN IF NOT EXISTS step VARCHAR;
"""
LOOP_KEYS = {"cycles": "cycle", "cycle_runs": "run_id"}  # what a write of each replaces


@dataclass(frozen=True)
class Decision:
    """One cycle's promotion decision: the candidate, its gate score, the champion it was
    compared with, and the verdict."""

    cycle: int
    candidate: str  # the candidate checkpoint's version
    candidate_path: str
    metric: str
    value: float
    champion_before: str | None
    champion_value: float | None
    promoted: bool
    reason: str
    decided_at: datetime  # UTC
    # {product: version} read (flywheel.loop.cycles.cycle_inputs); {} if decided before the
    # decisions recorded it
    inputs: dict[str, str] = field(default_factory=dict)
    # What decided it (flywheel.core.keys: inputs and cycles.gate) and what changed since the
    # decision it replaced; {} and [] if decided before keys were recorded
    build_key: dict[str, str] = field(default_factory=dict)
    build_changes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decided_at": self.decided_at.isoformat()}


@dataclass(frozen=True)
class CycleRun:
    """A finished Dagster run of one cycle: ``failed`` (with its message and the step that
    failed, an asset's name) or ``succeeded``."""

    run_id: str
    cycle: int | None
    status: str
    message: str
    finished_at: datetime  # UTC
    step: str | None = None  # None: succeeded, or recorded before the step was a column


FAILED, SUCCEEDED = "failed", "succeeded"
DECISION_COLUMNS = list(Decision.__dataclass_fields__)
RUN_COLUMNS = list(CycleRun.__dataclass_fields__)
UNRESOLVED = f"""
WHERE f.status = '{FAILED}' AND NOT EXISTS (
    SELECT 1 FROM cycle_runs s
    WHERE s.status = '{SUCCEEDED}' AND s.cycle IS NOT DISTINCT FROM f.cycle
      AND s.finished_at > f.finished_at)
"""


class LoopRecord:
    """The loop's reads and writes; ``Catalog`` provides ``write`` and ``rows``."""

    write: Callable[[], AbstractContextManager[Any]]
    rows: Callable[[str], list[dict[str, Any]]]

    def record_decision(self, d: Decision) -> None:
        """Replace cycle ``d.cycle``'s promotion decision (one row per cycle)."""
        row = {**asdict(d), "decided_at": _to_db(d.decided_at)}
        row |= {k: json.dumps(row[k]) for k in ("inputs", "build_key", "build_changes")}
        self._replace("cycles", DECISION_COLUMNS, [row[k] for k in DECISION_COLUMNS])

    def decisions(self) -> list[Decision]:
        """Every cycle's promotion decision, by cycle. A row recorded before candidate_path
        was a column takes the path from the checkpoints table; before inputs was, none."""
        rows = self.rows(
            "SELECT c.* REPLACE (coalesce(c.candidate_path, k.path) AS candidate_path) "
            "FROM cycles c LEFT JOIN checkpoints k ON k.checkpoint = c.candidate ORDER BY c.cycle"
        )
        return [Decision(**_decision_row(r)) for r in rows]

    def record_cycle_run(self, run: CycleRun) -> None:
        """Record a finished cycle run; recording the same run again replaces it."""
        row = {**asdict(run), "finished_at": _to_db(run.finished_at)}
        self._replace("cycle_runs", RUN_COLUMNS, [row[k] for k in RUN_COLUMNS])

    def cycle_runs(self, unresolved_failures: bool = False) -> list[CycleRun]:
        """Every finished cycle run, oldest first; or only the failed runs that no later
        successful run of the same cycle has resolved."""
        where = UNRESOLVED if unresolved_failures else ""
        rows = self.rows(f"SELECT * FROM cycle_runs f {where} ORDER BY finished_at, run_id")
        return [CycleRun(**{**r, "finished_at": _from_db(r["finished_at"])}) for r in rows]

    def _replace(self, table: str, columns: list[str], values: list[Any]) -> None:
        # One write replaces the row of its key whole or not at all.
        marks = ", ".join("?" * len(columns))
        with self.write() as w:
            w.replace(table, values[columns.index(LOOP_KEYS[table])])
            w.con.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", values)


def _to_db(moment: datetime) -> str:
    # ISO text with its offset: DuckDB stores a TIMESTAMP given as text in UTC, whereas an
    # aware datetime given as a parameter is converted to the session's local time.
    return moment.astimezone(UTC).isoformat()


def _json(stored: str | None) -> dict[str, str]:
    return json.loads(stored) if stored else {}


def _decision_row(r: dict[str, Any]) -> dict[str, Any]:
    r = {**r, "decided_at": _from_db(r["decided_at"])}
    r |= {k: _json(r[k]) for k in ("inputs", "build_key")}
    return r | {"build_changes": json.loads(r["build_changes"] or "[]")}


def _from_db(stored: datetime) -> datetime:
    return stored.replace(tzinfo=UTC)

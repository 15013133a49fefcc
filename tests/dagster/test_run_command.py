"""``python -m jobs.run`` (what ``flywheel run`` starts): what it prints when a run fails, and
which failures still count."""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

from jobs.run import _unresolved, failure_lines


@dg.asset
def shards() -> int:
    return 1


@dg.asset_check(asset=shards, blocking=True)
def not_empty() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, description="0 rows", metadata={"rows": 0})


@dg.asset
def broken() -> int:
    raise ValueError("seed file has no usable record (line 3: missing_answer)")


def test_failure_lines_name_the_step_and_its_error() -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([broken], instance=instance, raise_on_error=False)
        lines = failure_lines(instance, result.run_id)
    assert len(lines) == 1
    assert lines[0].startswith("step broken failed:")
    assert "line 3: missing_answer" in lines[0]


def test_failure_lines_name_a_failed_check_and_what_it_found() -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([shards, not_empty], instance=instance, raise_on_error=False)
        lines = failure_lines(instance, result.run_id)
    assert any("check shards:not_empty failed: 0 rows" in line for line in lines), lines
    assert any("'rows': 0" in line for line in lines), lines


@dataclass
class Run:  # the two fields of a DagsterRun that _unresolved reads
    run_id: str
    status: dg.DagsterRunStatus
    tags: dict[str, str] = field(default_factory=dict)


def test_a_later_success_of_the_same_cycle_supersedes_its_failure() -> None:
    fail, ok = dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS
    cycle = {"dagster/partition": "0"}
    runs = [Run("a", fail, cycle), Run("b", ok, cycle), Run("c", ok, {"dagster/partition": "1"})]
    assert _unresolved(runs) == []
    later = Run("d", fail, {"dagster/partition": "1"})
    assert _unresolved([*runs, later]) == [later]

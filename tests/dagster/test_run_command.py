"""``python -m jobs.run`` (what ``flywheel run`` starts): what it prints when a run fails, and
which failures still count."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dagster as dg

from jobs.run import AUTO_RETRY, WILL_RETRY, _unfinished, _unresolved, failure_lines


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


def test_a_crashed_run_that_dagster_will_retry_is_not_over() -> None:
    """A run monitoring failed and run retries will rerun is waited for, not reported; so is
    a run still STARTED from before this invocation (until the monitor fails it)."""

    def add(instance: dg.DagsterInstance, status: dg.DagsterRunStatus, **tags: str) -> str:
        run = dg.DagsterRun(job_name="cycle_job", run_id=str(uuid.uuid4()), status=status)
        return instance.add_run(run.with_tags(tags)).run_id

    fail, started = dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.STARTED
    with dg.DagsterInstance.ephemeral() as instance:
        left_started = add(instance, started)  # a killed daemon's run, before this invocation
        since = datetime.now(UTC)
        will_retry = add(instance, fail, **{WILL_RETRY: "true"})
        add(instance, fail, **{WILL_RETRY: "true", AUTO_RETRY: "its-retry"})  # retry exists
        add(instance, fail, **{WILL_RETRY: "false"})  # final: flywheel run reports it
        add(instance, dg.DagsterRunStatus.SUCCESS)
        unfinished = {r.run_id for r in _unfinished(instance, since)}
    assert unfinished == {left_started, will_retry}

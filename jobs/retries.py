"""Retry a crashed cycle run that Dagster's retry daemon said it would retry and never did.

Dagster (1.13) stores a run's RUN_FAILURE event, then sets the run's status to FAILURE, then
tags it ``dagster/will_retry``. The daemon that retries runs reads new RUN_FAILURE events
after a cursor; one that reads the event before the status and the tag are written decides
"no retry" and moves its cursor past the event for good. The run then says it will be retried
and never is: ``flywheel run`` waited for that retry until its timeout (seen once when the
daemon had restarted a second before run monitoring failed a killed run).

``flywheel run`` (``jobs.run``) calls :func:`retry_missed` while it waits: a failed cycle run
tagged ``will_retry=true`` whose retry has not appeared ``MISSED_AFTER_S`` after it ended is
retried here with Dagster's own retry function, so the retry is the one the daemon would have
made (from the failed step, ``dagster/parent_run_id`` and ``dagster/retry_number`` tags); it
is queued, and the daemon's run queue launches it.
"""

from __future__ import annotations

import time
from pathlib import Path

from dagster import DagsterInstance, DagsterRun, MetadataValue
from dagster._core.events import EngineEventData
from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG as AUTO_RETRY  # its retry's id

# The daemon retries a failed run within seconds of its failure (its event-log consumer
# polls every 5 s); after this long a retry that has not appeared was missed.
MISSED_AFTER_S = 30.0


def missed(
    instance: DagsterInstance, runs: list[DagsterRun], after_s: float, daemon_since: float
) -> list[DagsterRun]:
    """Those of ``runs`` (failed, to be retried) with no retry ``after_s`` seconds after they
    ended and after the daemon started (``daemon_since``, a timestamp: a daemon restarted
    after a failure retries it when it starts): neither the tag naming their retry nor a run
    naming them as its parent."""
    now = time.time()
    left = []
    for run in runs:
        record = instance.get_run_record_by_id(run.run_id)  # the run and tags as they are now
        run = record.dagster_run if record else run
        ended = record.end_time if record else None
        if AUTO_RETRY in run.tags or ended is None or now - max(ended, daemon_since) < after_s:
            continue
        group = instance.get_run_group(run.run_id)
        if not any(r.parent_run_id == run.run_id for r in (group[1] if group else [])):
            left.append(run)
    return left


def retry_missed(
    instance: DagsterInstance,
    workspace: Path,
    runs: list[DagsterRun],
    daemon_since: float,
    after_s: float = MISSED_AFTER_S,
) -> list[str]:
    """Retry each of ``runs`` whose retry the daemon missed (:func:`missed`), as the daemon
    would have: from the failed step, through the workspace's code location. The new runs'
    ids (queued: the daemon's run queue launches them)."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster._daemon.auto_run_reexecution.auto_run_reexecution import retry_run

    todo = missed(instance, runs, after_s, daemon_since)
    if not todo:
        return []
    made, before = [], _children()
    target = WorkspaceFileTarget(paths=[str(workspace)])
    with WorkspaceProcessContext(instance, target) as context:
        for run in todo:
            retry_run(run, context)
            retry = (instance.get_run_by_id(run.run_id) or run).tags.get(AUTO_RETRY)
            if retry is None:  # Dagster's retry_run reported why on the run's event log
                continue
            made.append(retry)
            instance.report_engine_event(
                f"flywheel run retried this run: Dagster's retry daemon had not, "
                f"{after_s:.0f} s after the failure it tagged will_retry",
                run,
                engine_event_data=EngineEventData({"new run": MetadataValue.dagster_run(retry)}),
            )
    _reap(before)
    return made


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children()}


def _reap(before: set[int]) -> None:
    """Wait for the code server the workspace started (Dagster stops it, and does not wait
    for it: a zombie of this process otherwise)."""
    import psutil

    for child in psutil.Process().children():
        if child.pid not in before:
            try:
                child.wait(timeout=10)
            except psutil.Error:  # still running after 10 s, or gone: not ours to wait for
                continue

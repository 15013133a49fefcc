"""The run launcher of a flywheel on one host: Dagster's default, plus a health check, so that
run monitoring finds a run whose worker died (``kill -9``, OOM, a reboot) and fails it, and
run retries rerun it from the failed step.

    dagster.yaml:  run_launcher: {module: jobs.launcher, class: LocalRunLauncher}
    python -c "from dagster import DagsterInstance; print(DagsterInstance.get().run_launcher)"

Dagster's ``DefaultRunLauncher`` starts each run's worker as a subprocess of the code server
(``dagster api grpc``) but cannot say whether it is still alive
(``supports_check_run_worker_health`` is False), so the monitoring daemon skips STARTED runs
and a run whose worker was killed stays STARTED for ever. This launcher answers from the run's
own event log: the worker writes RUN_START with its pid, so the worker is alive if that pid
is a live process here that already existed when it wrote the event (a pid reused by a later
process does not count). When the worker is dead, what it left running is stopped before the
run is failed, so the retry does not race it: the step processes of a job that runs a
process per step (their pids are on the run's STEP_WORKER_STARTED/STEP_START events; the
flywheel's own jobs run their steps in the worker) with their children, and every process that
carries the run's id in ``RUN_ENV`` (the stages Pipes launched and their workers, orphaned
when their step process died too).

It checks workers on the daemon's own host: the workers of a local code server (which the
daemon starts from the workspace) and of one whose gRPC address is this host. A run whose
worker runs on another host is reported RUNNING, unchecked; a deployment across machines uses
a launcher whose platform checks health natively (dagster-k8s, dagster-docker, dagster-aws ECS).
"""

from __future__ import annotations

import json
import socket

from dagster import DagsterEventType as E
from dagster import DagsterInstance, DagsterRun, DefaultRunLauncher
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG

from assets.training import RUN_ENV

HOST_TAG = "flywheel/worker_host"  # the host whose code server runs the run's worker
LOCAL = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
CLOCK_SLACK_S = 1.0  # process start times are rounded to clock ticks; event times are not
STOP_WAIT_S = 10.0  # how long leftover processes get to exit on SIGTERM before SIGKILL


class LocalRunLauncher(DefaultRunLauncher):
    """``DefaultRunLauncher`` whose run workers run monitoring can check (on this host)."""

    def launch_run(self, context: LaunchRunContext) -> None:
        self._instance.add_run_tags(context.dagster_run.run_id, {HOST_TAG: socket.gethostname()})
        super().launch_run(context)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        host = worker_host(run, local=_local_storage(self._instance))
        if host != socket.gethostname():
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, f"worker on host {host or 'unknown'}: not checked here"
            )
        started = _last_event(self._instance, run.run_id, E.RUN_START)
        if started is None:  # STARTED without RUN_START: nothing to check against
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "the run has no RUN_START event")
        pid, at = started.dagster_event.pid, started.timestamp
        if pid is not None and _alive_since(pid, at):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker pid {pid} is alive")
        stopped = stop_leftovers(self._instance, run.run_id)
        left = f"; stopped what it left running: pids {stopped}" if stopped else ""
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"run worker pid {pid} on {host} is gone (killed or crashed){left}",
        )


def worker_host(run: DagsterRun, local: bool = False) -> str | None:
    """The host of the run's worker: the tag this launcher set, else (runs launched before
    it was configured) the code server's gRPC host, this host if that is a local address. A
    run with neither was executed where it was started (``dagster job execute``, ``dg
    launch``): this host when the instance's storage is ``local`` (SQLite files here), else
    unknown."""
    if HOST_TAG in run.tags:
        return run.tags[HOST_TAG]
    grpc = json.loads(run.tags.get(GRPC_INFO_TAG) or "{}")
    if not grpc:
        return socket.gethostname() if local else None
    host = grpc.get("host")
    return socket.gethostname() if host in LOCAL or "socket" in grpc else host


def _local_storage(instance: DagsterInstance) -> bool:
    """Whether the instance keeps its runs in SQLite files on this machine (the embedded
    default), not in a database other hosts share (Postgres)."""
    from dagster._core.storage.runs import SqliteRunStorage

    return isinstance(instance.run_storage, SqliteRunStorage)


def _last_event(instance: DagsterInstance, run_id: str, kind: E):  # noqa: ANN202
    records = instance.get_records_for_run(run_id, of_type=kind, limit=1, ascending=False)
    return records.records[0].event_log_entry if records.records else None


def _alive_since(pid: int, at: float) -> bool:
    """Whether ``pid`` is a live process here that already existed at time ``at``."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= at + CLOCK_SLACK_S
    except psutil.Error:  # no such process (or not ours to see)
        return False


def leftovers(instance: DagsterInstance, run_id: str) -> list:
    """The run's processes still alive here: its step processes (if they existed when they
    wrote their events) with their descendants, and every process whose environment names
    the run in ``RUN_ENV``."""
    import psutil

    found: dict[int, psutil.Process] = {}
    kinds = {E.STEP_WORKER_STARTED, E.STEP_START}
    for record in instance.get_records_for_run(run_id, of_type=kinds).records:
        entry = record.event_log_entry
        pid = entry.dagster_event.pid if entry.dagster_event else None
        if pid and pid not in found and _alive_since(pid, entry.timestamp):
            proc = psutil.Process(pid)
            found[pid] = proc
            found.update({c.pid: c for c in _children(proc)})
    for proc in psutil.process_iter():
        try:
            if proc.pid not in found and proc.environ().get(RUN_ENV) == run_id:
                found[proc.pid] = proc
        except psutil.Error:  # gone meanwhile, or its environment is not ours to read
            continue
    return list(found.values())


def _children(proc) -> list:  # noqa: ANN001 - psutil.Process
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def stop_leftovers(instance: DagsterInstance, run_id: str) -> list[int]:
    """SIGTERM what the dead run left running, SIGKILL what is still there after
    ``STOP_WAIT_S``; the pids stopped."""
    import psutil

    procs = leftovers(instance, run_id)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=STOP_WAIT_S)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue
    return sorted(p.pid for p in procs)


def fail_dead_runs(instance: DagsterInstance) -> list[str]:
    """Fail every STARTED run of this host whose worker is gone, as run monitoring does, and
    free the pool slots it held; the ids of the runs failed. ``flywheel run`` calls it before
    anything else: a run killed while no daemon ran (the graph's run, executed by the command
    itself) stays STARTED for ever otherwise, holding the ``gpu`` pool, and every run that
    needs the pool waits behind it. Only this launcher can say a worker is gone."""
    from dagster import DagsterRunStatus, RunsFilter

    launcher = instance.run_launcher
    if not isinstance(launcher, LocalRunLauncher):
        return []
    failed = []
    for run in instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED])):
        health = launcher.check_run_worker_health(run)
        if health.status == WorkerStatus.FAILED:
            instance.report_run_failed(run, f"found by flywheel run: {health.msg}")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            failed.append(run.run_id)
    return failed

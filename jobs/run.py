"""Run a flywheel: materialize the graph, then let the daemon turn the flywheel until it stops.

    flywheel run [--spec S] [--set key=value ...]      (sets the environment, then runs this)
    python -m jobs.run --workspace W --working-directory D [--timeout S] [--skip-base]

0. ``flywheel check``'s preflight of the spec: any error stops here, before a launch. One
   flywheel run a project at a time (``$DAGSTER_HOME/run.lock``); a run left STARTED by a
   worker that is gone (a run killed before any daemon watched it) is failed and its pool
   slots freed, so nothing waits behind it.
1. ``dagster job execute -m definitions -j flywheel_job`` (in process, recorded in
   ``$DAGSTER_HOME``): raw corpora -> ... -> seed SFT model -> its eval. Completed stages with
   unchanged inputs are reused, not redone.
2. ``dagster-daemon run -w W``, unless a daemon already runs on the same home (``flywheel
   ui``'s): one daemon an instance, whoever started it. The accepted-data sensor (RUNNING by
   default) starts cycle 0, and every cycle whose accepted generations reach
   ``cycles.threshold_rows`` starts the next, until ``cycles.max_cycles`` or
   ``cycles.patience`` stops the loop. Nothing here launches a
   cycle: the sensor does, exactly as in a deployment.
3. Once the loop has stopped and no cycle run is queued or running, the daemon is stopped, and
   ``flywheel summary`` and ``flywheel report`` (the per-cycle table, and why the loop stopped)
   are printed.

A failed run ends with its failing steps and their errors, or the failed checks, printed here
(exit 1); the daemon's log is kept in ``$DAGSTER_HOME/daemon.log``. Only runs started by this
invocation count: a cycle that failed before and has since succeeded is history. A crashed
run is not the end: a run left STARTED by a killed daemon is waited for (run monitoring fails
it, ``jobs.launcher``), and a failed run that Dagster's run retries will rerun is waited for
until its retry has run (made here if the daemon missed it, ``jobs.retries``); the loop goes
on from there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flywheel.core.spec import env_overrides, load_spec
from flywheel.preflight import errors, preflight

POLL_S = 2.0
RECORD_WAIT_S = 60.0  # the run-status sensors that record finished cycle runs tick every 5 s
BIN = Path(sys.executable).parent  # the venv's scripts: dagster, dagster-daemon
ACTIVE = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
# Dagster's run-retry tags (dagster._core.storage.tags): on a failed run it will retry, on
# that run once its retry exists, on the retry (naming the run it retries)
WILL_RETRY, AUTO_RETRY, PARENT = (
    "dagster/will_retry",
    "dagster/auto_retry_run_id",
    "dagster/parent_run_id",
)


def say(message: str) -> None:
    print(f"[flywheel] {message}", flush=True)


def _daemon(home: Path, workspace: Path, cwd: Path) -> subprocess.Popen:
    log = open(home / "daemon.log", "ab")  # noqa: SIM115 - lives as long as the daemon
    argv = [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)]
    return subprocess.Popen(
        argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def other_daemons(home: Path, mine: subprocess.Popen | None = None) -> list[int]:
    """The pids of live Dagster daemons on this Dagster home other than ``mine``: the one
    ``flywheel ui`` (``dagster dev``) runs, or one started by hand."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        daemon = any(Path(c).name == "dagster-daemon" for c in cmd[:2]) or "dagster._daemon" in cmd
        if not daemon or "run" not in cmd or (mine is not None and proc.pid == mine.pid):
            continue
        try:
            theirs = proc.environ().get("DAGSTER_HOME")
        except psutil.Error:  # gone meanwhile, or not ours to read
            continue
        if theirs and Path(theirs).resolve() == home.resolve():
            found.append(proc.pid)
    return found


class Daemon:
    """One Dagster daemon on the instance, whoever runs it: this command starts its own only
    while no other runs on the same home (two daemons on one instance double every sensor
    tick and queue pass, which Dagster does not support), and hands over to one that appears
    (``flywheel ui`` opened mid-run), taking over again if that one goes away."""

    def __init__(self, home: Path, workspace: Path, cwd: Path) -> None:
        self.home, self.workspace, self.cwd = home, workspace, cwd
        self.proc: subprocess.Popen | None = None  # the daemon this command started
        self.seen: list[int] = []  # the other daemons last seen

    def ensure(self) -> None:
        others = other_daemons(self.home, self.proc)
        running = self.proc is not None and self.proc.poll() is None
        if running and others:
            _stop(self.proc)
            say(f"another Dagster daemon on this home (pid {others[0]}) turns the flywheel now")
        elif not running and not others:
            self.proc = _daemon(self.home, self.workspace, self.cwd)
            log = self.home / "daemon.log"
            say(f"dagster-daemon started (log: {log}); the sensor turns the flywheel")
        elif not running and others != self.seen:
            say(f"the Dagster daemon already on this home (pid {others[0]}) turns the flywheel")
        self.seen = others

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


def _runs(instance, job: str, since: datetime) -> list:  # noqa: ANN001
    """The runs of ``job`` created at or after ``since``, oldest first."""
    from dagster import RunsFilter

    records = instance.get_run_records(filters=RunsFilter(job_name=job, created_after=since))
    return [r.dagster_run for r in sorted(records, key=lambda r: r.create_timestamp)]


def failure_lines(instance, run_id: str) -> list[str]:  # noqa: ANN001
    """Why a run failed, from its event log: each failed step with its error (and the error's
    cause), each failed asset check with what it found; the run's own error if neither."""
    from dagster import DagsterEventType as E

    kinds = {E.STEP_FAILURE, E.ASSET_CHECK_EVALUATION, E.RUN_FAILURE}
    lines, run_error = [], None
    for entry in instance.all_logs(run_id, of_type=kinds):
        event = entry.dagster_event
        data = event.event_specific_data
        if event.event_type == E.STEP_FAILURE:
            lines.append(f"step {event.step_key} failed: {_error_text(data.error)}")
        elif event.event_type == E.ASSET_CHECK_EVALUATION and not data.passed:
            found = {k: getattr(v, "value", v) for k, v in (data.metadata or {}).items()}
            lines.append(
                f"check {data.asset_key.to_user_string()}:{data.check_name} failed"
                + (f": {data.description}" if data.description else "")
                + (f" {found}" if found else "")
            )
        elif event.event_type == E.RUN_FAILURE:
            run_error = event.message
    return lines or [run_error or "the run failed (no step error recorded)"]


def _error_text(error) -> str:  # noqa: ANN001 - dagster's SerializableErrorInfo
    """The error's message, and its causes' (a Pipes subprocess failure names the cause)."""
    if error is None:
        return "no error recorded"
    parts = [error.message.strip()]
    cause = error.cause
    while cause is not None:
        parts.append(f"caused by {cause.message.strip()}")
        cause = cause.cause
    return " | ".join(p.splitlines()[0] if len(p) > 400 else p for p in parts)


def materialize_graph(instance, working_directory: Path) -> int:  # noqa: ANN001
    """Step 1: ``flywheel_job`` through Dagster's CLI; on failure, print why. The run executes
    in that command's process: tagged with this host, run monitoring (and ``fail_dead_runs``)
    can find it dead after a kill; never retried by Dagster, since rerunning flywheel run does."""
    from jobs.launcher import HOST_TAG

    tags = {HOST_TAG: socket.gethostname(), "dagster/max_retries": "0"}
    since = datetime.now(UTC)
    argv = [str(BIN / "dagster"), "job", "execute", "-m", "definitions"]
    argv += ["-d", str(working_directory), "-j", "flywheel_job", "--tags", json.dumps(tags)]
    say("materializing the graph: " + " ".join(argv[1:]))
    code = subprocess.run(argv, cwd=working_directory, check=False).returncode
    runs = _runs(instance, "flywheel_job", since)
    if code == 0 and runs and runs[-1].status.value == "SUCCESS":
        return 0
    say("flywheel_job failed:")
    for line in failure_lines(instance, runs[-1].run_id) if runs else ["it never started"]:
        say(f"  {line}")
    return 1


def _unfinished(instance, since: datetime) -> list:  # noqa: ANN001
    """Cycle runs not over yet: those in progress, whenever created (a run a killed daemon
    left STARTED counts until run monitoring fails it), and those that failed after
    ``since`` and that Dagster's run retries will rerun but has not yet (``will_retry`` is
    set when the failure is stored, ``auto_retry_run_id`` once the retry run exists)."""
    from dagster import DagsterRunStatus, RunsFilter

    active = RunsFilter(job_name="cycle_job", statuses=[DagsterRunStatus(s) for s in ACTIVE])
    failed = RunsFilter(
        job_name="cycle_job",
        statuses=[DagsterRunStatus.FAILURE],
        updated_after=since - timedelta(seconds=1),  # run storage keeps whole seconds
        tags={WILL_RETRY: "true"},
    )
    retrying = [r for r in instance.get_runs(filters=failed) if AUTO_RETRY not in r.tags]
    return [*instance.get_runs(filters=active), *retrying]


def _describe(run) -> str:  # noqa: ANN001
    """A cycle run's status line, saying when it is Dagster's retry of a crashed run."""
    text = f"cycle {run.tags.get('dagster/partition')}: run {run.run_id[:8]} {run.status.value}"
    if run.tags.get(PARENT):
        text += f" (retry of run {run.tags[PARENT][:8]})"
    if run.status.value == "FAILURE" and run.tags.get(WILL_RETRY) == "true":
        text += ": Dagster retries it from the failed step (run_retries)"
    return text


def _unresolved(runs: list) -> list:
    """Failed runs with no later successful run of the same cycle (partition)."""
    last: dict[str | None, object] = {}
    for run in runs:  # oldest first: a later run of a cycle supersedes an earlier one
        last[run.tags.get("dagster/partition")] = run
    return [r for r in last.values() if r.status.value == "FAILURE"]


def _await_records(spec, instance, since: datetime) -> None:  # noqa: ANN001
    """Wait (at most ``RECORD_WAIT_S``) until the run-status sensors have recorded each
    finished cycle run created since ``since`` in the catalog, before the daemon is stopped:
    the report printed next then counts them (a retry's success resolves the crash it
    retried). The runs are read afresh: a snapshot taken before a run ended would miss it."""
    from flywheel.core.catalog import Catalog

    runs = _runs(instance, "cycle_job", since)
    finished = {r.run_id for r in runs if r.status.value in ("SUCCESS", "FAILURE")}
    deadline = time.monotonic() + RECORD_WAIT_S
    while missing := finished - {r.run_id for r in Catalog.open(spec.catalog).cycle_runs()}:
        if time.monotonic() > deadline:
            say(f"not yet recorded by the run-status sensors (flywheel report): {sorted(missing)}")
            return
        time.sleep(POLL_S)


def wait_for_loop(  # noqa: ANN001
    instance,
    timeout_s: float | None,
    since: datetime,
    workspace: Path,
    daemon_since: float,
    daemon: Daemon | None = None,
) -> int:
    """Poll until the loop stops with no cycle run active; 1 on a failed run or timeout. A
    crashed run whose retry Dagster's daemon missed is retried here (``jobs.retries``); one
    daemon turns the loop throughout (``Daemon.ensure``)."""
    from flywheel.loop.promotion import loop_state
    from flywheel.loop.status import starved, stuck_reason
    from jobs.retries import retry_missed

    spec = load_spec(None, env_overrides())
    deadline = time.monotonic() + timeout_s if timeout_s else None
    shown: set[tuple[str, str]] = set()
    stalled_since: float | None = None
    while deadline is None or time.monotonic() < deadline:
        if daemon is not None:
            daemon.ensure()
        # unfinished first: a run seen finished there is finished in the later snapshot too
        unfinished = _unfinished(instance, since)
        waiting = [r for r in unfinished if r.status.value == "FAILURE"]  # for their retry
        for retry in retry_missed(instance, workspace, waiting, daemon_since):
            say(f"Dagster's retry daemon missed a crashed run: retried it as run {retry[:8]}")
        runs = _runs(instance, "cycle_job", since)
        for run in [*runs, *unfinished]:
            key = (run.run_id, run.status.value)
            if key not in shown:
                shown.add(key)
                say(_describe(run))
        idle = not unfinished
        failed = _unresolved(runs)
        if failed and idle:
            for run in failed:
                say(f"cycle {run.tags.get('dagster/partition')} failed (run {run.run_id}):")
                for line in failure_lines(instance, run.run_id):
                    say(f"  {line}")
            _await_records(spec, instance, since)
            return 1
        state = loop_state(spec)
        if state.stopped and idle:
            say(f"the flywheel {state.reason}")
            _await_records(spec, instance, since)
            return 0
        stalled_since = (stalled_since or time.monotonic()) if idle and starved(spec) else None
        if stalled_since and time.monotonic() - stalled_since > 3 * spec.cycles.sensor_interval_s:
            say(f"the flywheel is stuck: {stuck_reason(spec)}")
            return 1
        time.sleep(POLL_S)
    say(f"timed out after {timeout_s:.0f} s; the loop had not stopped (flywheel report says why)")
    return 1


def spec_ready() -> bool:
    """Preflight the spec (``flywheel check``): print every problem; False on any error,
    so a missing file or a bad reference stops the run before anything is launched."""
    problems = preflight(load_spec(None, env_overrides()))
    for problem in problems:
        say(str(problem))
    if errors(problems):
        say("the spec has errors (see above; flywheel check repeats them): not started")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.run", description=__doc__)
    parser.add_argument("--workspace", type=Path, default=Path("workspace.yaml"))
    parser.add_argument("--working-directory", type=Path, default=Path.cwd())
    parser.add_argument("--timeout", type=float, default=None, help="seconds for the cycles")
    parser.add_argument("--skip-base", action="store_true", help="skip flywheel_job")
    args = parser.parse_args(argv)
    if not spec_ready():
        return 1
    home = Path(os.environ["DAGSTER_HOME"])
    with sole_run(home) as other:
        if other is not None:
            say(f"another flywheel run ({other}) is running this project: not started; watch it")
            say("with flywheel report or flywheel ui, or stop it first")
            return 1
        return _run(home, args)


def _run(home: Path, args: argparse.Namespace) -> int:
    from dagster import DagsterInstance

    from jobs.launcher import fail_dead_runs

    instance = DagsterInstance.get()
    for run_id in fail_dead_runs(instance):
        say(f"run {run_id[:8]} was left STARTED by a dead worker: failed it, freed its pool slots")
    started = datetime.now(UTC)
    if not args.skip_base and materialize_graph(instance, args.working_directory) != 0:
        return 1
    daemon = Daemon(home, args.workspace.resolve(), args.working_directory)
    try:
        code = wait_for_loop(
            instance, args.timeout, started, args.workspace.resolve(), time.time(), daemon
        )
    finally:
        daemon.stop()
    for verb in ("summary", "report"):  # the data products, then the per-cycle table
        subprocess.run([sys.executable, "-m", "flywheel.cli", verb], check=False)
    return code


@contextmanager
def sole_run(home: Path) -> Iterator[str | None]:
    """Hold ``<home>/run.lock`` while this command runs the project; yields None, or who holds
    it: two flywheel runs on one project would materialize the graph twice at once."""
    import fcntl

    home.mkdir(parents=True, exist_ok=True)
    with (home / "run.lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            yield lock.read().strip() or "pid unknown"
            return
        lock.truncate(0)
        lock.write(f"pid {os.getpid()}, since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
        lock.flush()
        yield None  # the lock goes with the file's closing, or this process


if __name__ == "__main__":
    raise SystemExit(main())

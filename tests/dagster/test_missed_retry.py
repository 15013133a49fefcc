"""``jobs.retries``: a failed run tagged ``will_retry=true`` whose retry Dagster's daemon never
made is retried from its failed step by ``flywheel run``, once, and the retry runs.

The daemon's miss is a race (it read the failure before the tag was written) that cannot be
staged on demand, so the test leaves the state it leaves: a run fails at its second step with
``retry_on_asset_or_op_failure: false`` (the daemon tags it ``will_retry=false`` and moves on),
then gets the tag a crash gets, ``will_retry=true``, with no retry behind it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psutil

from jobs.retries import missed, retry_missed
from jobs.run import AUTO_RETRY
from tests.dagster.crash import PARENT, step_keys

BIN = Path(sys.executable).parent
DEFS = """
import os
from pathlib import Path

import dagster as dg


@dg.op
def first() -> int:
    with Path(os.environ["MARKS"], "first").open("a") as f:
        f.write("ran\\n")
    return 1


@dg.op
def second(x: int) -> int:
    if not Path(os.environ["MARKS"], "fixed").exists():
        raise RuntimeError("not fixed yet")
    return x


@dg.job
def cycle_job():
    second(first())


defs = dg.Definitions(jobs=[cycle_job])
"""
INSTANCE = """
telemetry: {enabled: false}
run_retries: {enabled: true, max_retries: 2, retry_on_asset_or_op_failure: false}
"""


def _wait(instance: dg.DagsterInstance, run_id: str, daemon: subprocess.Popen) -> dg.DagsterRun:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            return run
        assert daemon.poll() is None, "dagster-daemon exited"
        time.sleep(0.5)
    raise TimeoutError(f"run {run_id} did not finish")


def _running(instance: dg.DagsterInstance, daemon: subprocess.Popen) -> None:
    """Wait until the daemon beats (its daemons started)."""
    deadline = time.monotonic() + 60
    while not instance.get_daemon_heartbeats():
        assert daemon.poll() is None and time.monotonic() < deadline, "no dagster-daemon"
        time.sleep(0.5)


def test_a_retry_the_daemon_missed_is_made_once_from_the_failed_step(tmp_path: Path) -> None:
    (tmp_path / "defs.py").write_text(DEFS)
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text("load_from:\n  - python_file: defs.py\n")
    home, marks = tmp_path / "home", tmp_path / "marks"
    home.mkdir(), marks.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE)
    env = {**os.environ, "DAGSTER_HOME": str(home), "MARKS": str(marks)}
    env["DAGSTER_EVENT_LOG_CONSUMER_DAEMON_INTERVAL_SECONDS"] = "1"
    # The storage is set up here, before the daemon starts: two processes creating a SQLite
    # storage at once can both stamp its schema (alembic: "more than one head").
    instance = dg.DagsterInstance.from_config(str(home))
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with instance:
            _running(instance, daemon)
            argv = [str(BIN / "dagster"), "job", "launch", "-w", str(workspace), "-j", "cycle_job"]
            done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            (launched,) = instance.get_runs()
            failed = _wait(instance, launched.run_id, daemon)
            assert failed.status == dg.DagsterRunStatus.FAILURE
            time.sleep(3)  # the daemon's consumer has seen the failure (it polls every 1 s)
            assert len(instance.get_runs()) == 1  # it did not retry a step failure
            instance.add_run_tags(failed.run_id, {"dagster/will_retry": "true"})

            # within the grace period after the failure (or the daemon's start): left alone
            assert missed(instance, [failed], after_s=60, daemon_since=0) == []
            assert missed(instance, [failed], after_s=0, daemon_since=time.time() + 60) == []
            (marks / "fixed").touch()
            before = {c.pid for c in psutil.Process().children()}
            made = retry_missed(instance, workspace, [failed], daemon_since=0, after_s=0)
            assert len(made) == 1
            # the code server it started for the workspace has ended and was waited for: no
            # process of it left, not even a zombie
            assert {c.pid for c in psutil.Process().children()} <= before
            assert retry_missed(instance, workspace, [failed], daemon_since=0, after_s=0) == []

            retry = _wait(instance, made[0], daemon)
            assert retry.status == dg.DagsterRunStatus.SUCCESS
            assert retry.tags[PARENT] == failed.run_id
            assert retry.tags["dagster/retry_number"] == "1"
            assert instance.get_run_by_id(failed.run_id).tags[AUTO_RETRY] == retry.run_id
            assert step_keys(instance, retry.run_id, dg.DagsterEventType.STEP_START) == {"second"}
            assert (marks / "first").read_text() == "ran\n"  # the finished step was reused
            events = instance.all_logs(failed.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
            assert any("flywheel run retried this run" in (e.message or "") for e in events)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()

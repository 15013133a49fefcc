"""Crash a running flywheel and check that it recovers by itself, whatever the instance's
storage (the ``dagster.yaml`` in ``$DAGSTER_HOME`` decides: SQLite, Postgres).

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/dagster/test_flywheel_e2e.py -s

``kill_in_training`` starts ``flywheel run`` and, once cycle 1 trains and has saved a
checkpoint, freezes and then SIGKILLs every process it started (the run command, the
dagster-daemon in its own session, the code server, the run worker, the step process and the
trainer it launched through Pipes), as a power cut would. ``recover`` runs
``flywheel run --skip-base`` again; ``assert_recovered`` checks what Dagster did about the
killed run: run monitoring failed it, run retries reran it from the failed step (reusing the
steps that had finished), the training resumed from its checkpoint, and the loop stopped at
``cycles.max_cycles`` with no failure left unresolved.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psutil

from flywheel.core.artifacts import MANIFEST
from flywheel.core.spec import load_spec
from flywheel.loop.cycles import checkpoint_root

BIN = Path(sys.executable).parent
PARENT, ROOT_RUN = "dagster/parent_run_id", "dagster/root_run_id"
# Cycle 1 trains long enough to be killed after a checkpoint and before its end: the tiny
# model takes ~40 ms a step, and at 20 steps a loaded machine sometimes finished the training
# (and published it, so the retry reused it) before the kill landed. 200 steps did too once,
# in a CI beside three other training jobs (load ~6); 400 leave ~15 s quiet.
SETTINGS = ["cycles.train.steps=400", "cycles.train.save_every=10"]
SETS = [a for s in SETTINGS for a in ("--set", s)]


def fast_recovery(config: dict) -> dict:
    """An instance config whose monitor and slot sweeper poll every second (not every 10 s)."""
    monitoring = {**config["run_monitoring"], "poll_interval_seconds": 1}
    monitoring["free_slots_after_run_end_seconds"] = 1
    return {**config, "run_monitoring": monitoring}


def recovery_env() -> dict[str, str]:
    """The environment the daemon needs to retry a failed run within seconds."""
    return {"DAGSTER_EVENT_LOG_CONSUMER_DAEMON_INTERVAL_SECONDS": "1"}  # default: 5 s


def start(env: dict[str, str], cwd: Path, args: list[str], log: Path) -> subprocess.Popen:
    """``flywheel run ARGS`` in its own session, its output in ``log``."""
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    argv = [str(BIN / "flywheel"), "run", *args]
    return subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def kill_in_training(env: dict[str, str], cwd: Path, spec: Path, log: Path) -> str:
    """Start ``flywheel run``; once cycle 1 trains and has saved a complete checkpoint, kill
    every process of it. The killed run's id: Dagster still has it STARTED (asserted)."""
    work = checkpoint_root(load_spec(spec, SETTINGS), 1) / "work"
    proc = start(env, cwd, ["--timeout", "900", *SETS], log)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        try:
            run = wait_for(
                "cycle 1 training after a checkpoint",
                lambda: training(instance, "1", work),
                proc,
                timeout=900,
            )
        finally:
            killed = kill_everything(proc)
        print("killed:\n  " + "\n  ".join(killed))
        assert len(killed) >= 5, killed  # command, daemon, code server, run worker, step...
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
        return run.run_id


def training(instance: dg.DagsterInstance, cycle: str, work: Path) -> dg.DagsterRun | None:
    """The cycle's run, once its training step runs and has saved a complete checkpoint."""
    tags = {"dagster/partition": cycle}
    runs = instance.get_runs(filters=dg.RunsFilter(job_name="cycle_job", tags=tags))
    if not runs or "cycle_checkpoint" not in running_steps(instance, runs[0].run_id):
        return None
    return runs[0] if list(work.glob(f"*/checkpoint-*/{MANIFEST}")) else None


def recover(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """``flywheel run --skip-base`` after the crash, as a user would start it again."""
    argv = [str(BIN / "flywheel"), "run", "--skip-base", "--timeout", "600", *SETS]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    print(f"recovered in {time.monotonic() - started:.0f} s:\n{done.stdout[-3000:]}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def assert_recovered(home: str, run_id: str, stdout: str) -> None:
    """The killed run failed with the monitor's message; a retry of the same cycle succeeded,
    reusing the steps that had finished and resuming the training from its checkpoint; the
    loop stopped at ``cycles.max_cycles`` with no unresolved failure (``stdout``: the second
    ``flywheel run``'s, which ends with ``flywheel report``)."""
    with dg.DagsterInstance.from_config(home) as instance:
        recovery = Recovery.of(instance, run_id)
        assert recovery.killed.status == dg.DagsterRunStatus.FAILURE
        assert "run worker pid" in recovery.failure and "is gone" in recovery.failure
        retry = recovery.succeeded()
        assert retry is not None, [(r.run_id, r.status) for r in recovery.retries]
        assert retry.tags[PARENT] == run_id and retry.tags["dagster/partition"] == "1"
        executed = step_keys(instance, retry.run_id, dg.DagsterEventType.STEP_START)
        assert "training_set" not in executed  # finished before the kill: reused
        assert "cycle_checkpoint" in executed
        assert (resumed_from(instance, retry.run_id) or 0) > 0  # from the saved checkpoint
    assert f"(retry of run {run_id[:8]})" in stdout
    assert "loop: stopped: cycle 1 reached cycles.max_cycles" in stdout
    assert "failed:" not in stdout  # the retry's success resolved the crash


def resumed_from(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The step cycle 1's training resumed from in run ``run_id`` (its materialization)."""
    kind = dg.DagsterEventType.ASSET_MATERIALIZATION
    for record in instance.get_records_for_run(run_id, of_type=kind).records:
        mat = record.event_log_entry.asset_materialization
        if mat.asset_key.to_user_string() == "cycle_checkpoint":
            value = mat.metadata.get("resumed_from_step")
            return int(getattr(value, "value", value))
    return None


def wait_for(what: str, ready: Callable[[], object], proc: subprocess.Popen, timeout: float):
    """Poll ``ready()`` until it returns something truthy (returned); fail if ``proc`` exits
    first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ready()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"flywheel run exited ({proc.returncode}) before {what}")
        time.sleep(0.2)
    raise TimeoutError(f"no {what} after {timeout:.0f} s")


def processes_of(proc: subprocess.Popen) -> list[psutil.Process]:
    """Every live process ``proc`` started, directly or not, and every process in their
    process groups (the daemon runs in a session of its own)."""
    root = psutil.Process(proc.pid)
    tree = [root, *root.children(recursive=True)]
    groups = {os.getpgid(p.pid) for p in tree if p.is_running()}
    for p in psutil.process_iter():
        try:
            if p.pid not in {t.pid for t in tree} and os.getpgid(p.pid) in groups:
                tree.append(p)
        except (psutil.Error, ProcessLookupError):
            continue
    return tree


def kill_everything(proc: subprocess.Popen) -> list[str]:
    """SIGSTOP every process of ``proc`` (so none reacts to another's death), then SIGKILL
    them all; their command lines, for the test's log."""
    procs = processes_of(proc)
    names = []
    for p in procs:
        try:
            names.append(f"{p.pid}: {' '.join(p.cmdline())[:160]}")
            p.send_signal(signal.SIGSTOP)
        except psutil.Error:
            continue
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            continue
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30  # orphans stay zombies where nothing reaps them
    while (alive := [p for p in procs if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, alive
    return names


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def running_steps(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    """The run's steps that started and have not finished."""
    kinds = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}
    kinds |= {dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.STEP_SKIPPED}
    started, ended = set(), set()
    for record in instance.get_records_for_run(run_id, of_type=kinds).records:
        event = record.event_log_entry.dagster_event
        is_start = event.event_type == dg.DagsterEventType.STEP_START
        (started if is_start else ended).add(event.step_key)
    return started - ended


def step_keys(instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType) -> set[str]:
    records = instance.get_records_for_run(run_id, of_type=kind).records
    return {r.event_log_entry.dagster_event.step_key for r in records}


@dataclass(frozen=True)
class Recovery:
    """What became of a killed run: its status and failure message, and its retries."""

    killed: dg.DagsterRun
    failure: str  # the RUN_FAILURE event's message ("" if none)
    retries: list[dg.DagsterRun]  # every later run of its run group, oldest first

    @classmethod
    def of(cls, instance: dg.DagsterInstance, run_id: str) -> Recovery:
        killed = instance.get_run_by_id(run_id)
        events = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        failure = "".join(r.event_log_entry.message or "" for r in events.records)
        group = instance.get_runs(filters=dg.RunsFilter(tags={ROOT_RUN: run_id}))
        retries = sorted(group, key=lambda r: int(r.tags.get("dagster/retry_number", 0)))
        return cls(killed, failure, retries)

    def succeeded(self) -> dg.DagsterRun | None:
        ok = [r for r in self.retries if r.status == dg.DagsterRunStatus.SUCCESS]
        return ok[-1] if ok else None

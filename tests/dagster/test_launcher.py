"""``jobs.launcher.LocalRunLauncher``'s health check, on real processes: the run's worker is
alive or gone, a reused pid is not the worker, and what a dead run left running is stopped.

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/dagster/test_launcher.py
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.events import DagsterEvent
from dagster._core.events.log import EventLogEntry
from dagster._core.launcher import WorkerStatus

from assets.training import RUN_ENV
from jobs.launcher import HOST_TAG, LocalRunLauncher, fail_dead_runs

JOB = "cycle_job"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def _launcher(instance: dg.DagsterInstance) -> LocalRunLauncher:
    launcher = LocalRunLauncher()
    launcher.register_instance(instance)
    return launcher


def _sleeper(env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=env)


def _run(instance: dg.DagsterInstance, host: str | None = None, tag: bool = True) -> dg.DagsterRun:
    tags = {HOST_TAG: host or socket.gethostname()} if tag else {}
    run = dg.DagsterRun(job_name=JOB, run_id=str(uuid.uuid4()), tags=tags)
    return instance.add_run(run)


def _entry(
    run: dg.DagsterRun,
    kind: dg.DagsterEventType,
    pid: int,
    at: float | None = None,
    step: str | None = None,
) -> EventLogEntry:
    """``kind`` as the process ``pid`` writes it: its pid on the event."""
    event = DagsterEvent(event_type_value=kind.value, job_name=JOB, step_key=step, pid=pid)
    return EventLogEntry(
        error_info=None,
        level=logging.DEBUG,
        user_message="",
        run_id=run.run_id,
        timestamp=at or time.time(),
        dagster_event=event,
    )


def _event(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    kind: dg.DagsterEventType,
    pid: int,
    at: float | None = None,
    step: str | None = None,
) -> None:
    instance.store_event(_entry(run, kind, pid, at, step))


def _gone(proc: subprocess.Popen, timeout: float = 15) -> bool:
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_a_dead_worker_fails_the_run_and_what_it_left_running_is_stopped(
    instance: dg.DagsterInstance,
) -> None:
    run = _run(instance)
    worker = _sleeper()
    step = _sleeper()  # a step process of the multiprocess executor
    stage = _sleeper({**os.environ, RUN_ENV: run.run_id})  # a trainer Pipes launched
    other = _sleeper({**os.environ, RUN_ENV: "another-run"})
    try:
        time.sleep(0.2)
        _event(instance, run, dg.DagsterEventType.RUN_START, worker.pid)
        _event(instance, run, dg.DagsterEventType.STEP_START, step.pid, step="cycle_checkpoint")
        launcher = _launcher(instance)
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        assert step.poll() is None and stage.poll() is None  # a live run is left alone

        worker.kill()
        worker.wait()
        health = launcher.check_run_worker_health(run)
        assert health.status == WorkerStatus.FAILED
        assert f"run worker pid {worker.pid}" in health.msg and "is gone" in health.msg
        assert str(step.pid) in health.msg and str(stage.pid) in health.msg
        assert _gone(step) and _gone(stage)
        assert other.poll() is None  # another run's stage is not touched
    finally:
        for proc in (worker, step, stage, other):
            proc.kill()
            proc.wait()


def test_a_pid_reused_by_a_later_process_is_not_the_worker(
    instance: dg.DagsterInstance,
) -> None:
    run = _run(instance)
    later = _sleeper()  # started after the worker wrote RUN_START (a minute ago)
    try:
        _event(instance, run, dg.DagsterEventType.RUN_START, later.pid, at=time.time() - 60)
        health = _launcher(instance).check_run_worker_health(run)
        assert health.status == WorkerStatus.FAILED
        assert later.poll() is None  # not the run's: left alone
    finally:
        later.kill()
        later.wait()


def test_a_worker_on_another_host_is_not_judged_from_here(
    instance: dg.DagsterInstance,
) -> None:
    run = _run(instance, host="gpu-node-7")
    _event(instance, run, dg.DagsterEventType.RUN_START, 1 << 22)  # no such pid here
    health = _launcher(instance).check_run_worker_health(run)
    assert health.status == WorkerStatus.RUNNING
    assert "gpu-node-7" in health.msg and "not checked" in health.msg


def test_an_untagged_run_is_judged_only_where_the_storage_is_local(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    """A run executed where it was started (``dagster job execute``) has no host tag: on an
    instance whose storage other hosts may share it is not judged; on SQLite files it is."""
    run = _run(instance, tag=False)
    _event(instance, run, dg.DagsterEventType.RUN_START, 1 << 22)  # no such pid here
    health = _launcher(instance).check_run_worker_health(run)
    assert health.status == WorkerStatus.RUNNING and "host unknown" in health.msg
    with dg.DagsterInstance.from_config(str(_project_instance(tmp_path))) as local:
        run = _run(local, tag=False)
        _event(local, run, dg.DagsterEventType.RUN_START, 1 << 22)
        assert local.run_launcher.check_run_worker_health(run).status == WorkerStatus.FAILED


def _project_instance(home: Path) -> Path:
    """``home`` with the project's instance config: SQLite storage, this launcher."""
    root = Path(__file__).resolve().parents[2]
    (home / "dagster.yaml").write_text((root / "dagster.yaml").read_text())
    return home


def test_the_instance_config_loads_the_launcher_with_monitoring_and_retries(
    tmp_path: Path,
) -> None:
    root = Path(__file__).resolve().parents[2]
    for config in (root / "dagster.yaml", root / "flywheel/project/templates/dagster.yaml"):
        (tmp_path / "dagster.yaml").write_text(config.read_text())
        with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
            assert isinstance(instance.run_launcher, LocalRunLauncher), config
            assert instance.run_monitoring_enabled and instance.run_retries_enabled, config
            assert instance.run_retries_max_retries > 0, config


def test_the_postgres_config_is_the_default_plus_its_storage() -> None:
    root = Path(__file__).resolve().parents[2]
    default = yaml.safe_load((root / "dagster.yaml").read_text())
    postgres = yaml.safe_load((root / "configs/dagster/postgres.yaml").read_text())
    storage = postgres.pop("storage")
    assert postgres == default
    assert storage == {"postgres": {"postgres_url": {"env": "FLYWHEEL_POSTGRES_URL"}}}
    template = yaml.safe_load((root / "flywheel/project/templates/dagster.yaml").read_text())
    assert template == default


def test_flywheel_run_fails_a_dead_run_and_frees_the_gpu_pool_it_held(tmp_path: Path) -> None:
    """A run killed while no daemon watched it (the graph's, executed by ``flywheel run``)
    stays STARTED holding the gpu pool; the next ``flywheel run`` fails it first, and only it."""
    with dg.DagsterInstance.from_config(str(_project_instance(tmp_path))) as instance:
        dead, alive = _run(instance), _run(instance)
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        sleeper = _sleeper()
        try:
            for run, pid in ((dead, gone.pid), (alive, sleeper.pid)):
                instance.handle_new_event(  # STARTED, as the worker's RUN_START makes it
                    _entry(run, dg.DagsterEventType.RUN_START, pid)
                )
            storage = instance.event_log_storage
            storage.initialize_concurrency_limit_to_default("gpu")
            assert storage.claim_concurrency_slot("gpu", dead.run_id, "sft_checkpoint").is_claimed
            assert fail_dead_runs(instance) == [dead.run_id]
            assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
            assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED
            assert storage.get_concurrency_info("gpu").claimed_slots == []
            assert fail_dead_runs(instance) == []  # the live worker's run is left alone
        finally:
            sleeper.kill()

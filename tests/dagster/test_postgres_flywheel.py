"""Dagster on PostgreSQL, end to end: the graph and two flywheel cycles, daemon and sensor
included, with run, event log and schedule storage on a real PostgreSQL server, through a
crash of every process while cycle 1 trains.

The server is started by ``flywheel.project.postgres`` (what ``make postgres`` runs); the
Dagster home holds ``configs/dagster/postgres.yaml``; ``flywheel run`` runs the tiny spec as
``test_flywheel_e2e`` does (which crashes it the same way on SQLite), is killed in cycle 1's
training (``tests/dagster/crash.py``) and started again with ``--skip-base``: the run monitor
fails the dead run and a retry finishes it. Then the instance, and the database directly,
must hold the runs (flywheel_job, the sensor's cycle runs, the retry), the materializations
and the check results.

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/dagster/test_postgres_flywheel.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psycopg2
import pytest
import yaml

from tests.dagster import crash

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
URL_ENV = "FLYWHEEL_POSTGRES_URL"


def _env(home: Path, spec: Path, url: str) -> dict[str, str]:
    home.mkdir()
    config = yaml.safe_load((ROOT / "configs" / "dagster" / "postgres.yaml").read_text())
    (home / "dagster.yaml").write_text(yaml.safe_dump(crash.fast_recovery(config)))
    return {
        **os.environ,
        **crash.recovery_env(),
        "DAGSTER_HOME": str(home),
        URL_ENV: url,
        "FLYWHEEL_SPEC": str(spec),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),  # the spec names tests.conftest:accept_nonempty
    }


def _count(libpq_url: str, table: str, run_ids: list[str]) -> int:
    conn = psycopg2.connect(libpq_url, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table} WHERE run_id = ANY(%s)", (run_ids,))
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.mark.integration
def test_postgres_storage_holds_the_graph_and_two_sensor_started_cycles(
    tmp_path: Path,
    flywheel_spec: Path,
    postgres_server,  # noqa: ANN001 - flywheel.project.postgres.Server
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dagster as dg

    env = _env(tmp_path / "dagster_home", flywheel_spec, postgres_server.url)
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    monkeypatch.setenv(URL_ENV, postgres_server.url)
    killed = crash.kill_in_training(env, ROOT, flywheel_spec, tmp_path / "killed_run.log")
    demo = crash.recover(env, ROOT)
    assert "cycle 1:" in demo.stdout and "reached cycles.max_cycles" in demo.stdout
    crash.assert_recovered(env["DAGSTER_HOME"], killed, demo.stdout)

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"

        def succeeded(job: str) -> list[dg.DagsterRun]:
            only = dg.RunsFilter(job_name=job, statuses=[dg.DagsterRunStatus.SUCCESS])
            return list(instance.get_runs(filters=only))

        base, cycles = succeeded("flywheel_job"), succeeded("cycle_job")
        assert len(base) == 1
        assert {r.tags.get("dagster/partition") for r in cycles} == {"0", "1"}
        # The daemon's sensor launched every cycle (the retry: the run retry daemon); the
        # sensor's ticks are in the schedule storage.
        first = [r for r in instance.get_runs(dg.RunsFilter(job_name="cycle_job"))]
        first = [r for r in first if crash.PARENT not in r.tags]
        assert {r.tags.get("dagster/partition") for r in first} == {"0", "1"}
        assert all(r.tags.get("dagster/sensor_name") for r in first), [r.tags for r in first]

        for key in ("raw_corpus", "deduplicated_shards"):
            assert instance.get_latest_materialization_event(dg.AssetKey(key)), key
        promoted = instance.fetch_materializations(dg.AssetKey("promoted_model"), limit=10)
        assert {r.partition_key for r in promoted.records} >= {"0", "1"}

        checks = dg.EventRecordsFilter(dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        evaluations = instance.get_event_records(checks, limit=1000)
        assert {r.run_id for r in evaluations} >= {r.run_id for r in base + cycles}

    # The same facts, read from the server itself.
    run_ids = [r.run_id for r in base + cycles]
    assert _count(postgres_server.libpq_url, "runs", run_ids) == 3
    assert _count(postgres_server.libpq_url, "event_logs", run_ids) > 100
    assert _count(postgres_server.libpq_url, "asset_check_executions", run_ids) > 0

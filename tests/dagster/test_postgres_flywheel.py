"""Dagster on PostgreSQL, end to end: the graph and two flywheel cycles, daemon and sensor
included, with run, event log and schedule storage on a real PostgreSQL server.

The server is started by ``flywheel.project.postgres`` (what ``make postgres`` runs); the
Dagster home holds ``configs/dagster/postgres.yaml``; ``flywheel run`` runs the tiny spec as
``test_flywheel_e2e`` does. Then the instance, and the database directly, must hold the runs
(flywheel_job, and the sensor's two cycle runs), the materializations and the check results.

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/dagster/test_postgres_flywheel.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
URL_ENV = "FLYWHEEL_POSTGRES_URL"


def _env(home: Path, spec: Path, url: str) -> dict[str, str]:
    home.mkdir()
    shutil.copy(ROOT / "configs" / "dagster" / "postgres.yaml", home / "dagster.yaml")
    return {
        **os.environ,
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
    demo = subprocess.run(
        [str(BIN / "flywheel"), "run", "--timeout", "900"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "cycle 1:" in demo.stdout and "reached cycles.max_cycles" in demo.stdout

    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    monkeypatch.setenv(URL_ENV, postgres_server.url)
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
        # The daemon's sensor launched every cycle; its ticks are in the schedule storage.
        assert all(r.tags.get("dagster/sensor_name") for r in cycles), [r.tags for r in cycles]

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

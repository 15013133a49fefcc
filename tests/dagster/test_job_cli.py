"""The main command's path: ``dg launch --job flywheel_job`` in a subprocess (multiprocess
executor), a Dagster home on disk, the spec chosen by ``FLYWHEEL_SPEC``, as ``make demo``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from flywheel.cli import main
from flywheel.core.shards import read_current
from flywheel.core.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_dagster_job_execute_materializes_and_records_the_run(
    small_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    venv = Path(sys.executable).parent
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FLYWHEEL_SPEC": str(small_spec),
        "PATH": f"{venv}{os.pathsep}{os.environ['PATH']}",  # what `source .venv/bin/activate` does
        "VIRTUAL_ENV": str(venv.parent),
    }
    cmd = [str(venv / "dg"), "launch", "--job", "flywheel_job"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        for key in ("raw_corpus", "filtered_documents", "deduplicated_shards"):
            assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None

    spec = load_spec(small_spec)
    assert read_current(spec.product_dir("deduplicated_shards")).num_rows > 0
    assert main(["summary", "--spec", str(small_spec)]) == 0
    assert "deduplicated_shards" in capsys.readouterr().out

"""The document plane with ``engine: ray`` through Dagster: the ingest, filter and dedup steps
join a Ray cluster through dagster-ray's resource, and the graph's data (the raw documents
and their quarantine included) equals the local engine's.

    .venv/bin/python -m pytest -q tests/dagster/test_ray_engine_assets.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from definitions import build_definitions
from flywheel.core.catalog import Catalog
from flywheel.core.shards import read_current
from flywheel.core.spec import load_spec

ray = pytest.importorskip("ray")

RAY = ["engine=ray", "ray.num_cpus=2"]


def _data_job(spec_file: Path, overrides: list[str]) -> tuple[bool, list[str]]:
    """Whether ``data_job`` succeeded, and every message of its run (resource logs too)."""
    defs = build_definitions(str(spec_file), overrides)
    with dg.DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def("data_job").execute_in_process(instance=instance)
        return result.success, [e.user_message for e in instance.all_logs(result.run_id)]


def _outputs(spec_file: Path, overrides: list[str]) -> tuple:
    spec = load_spec(spec_file, overrides)
    kept = read_current(spec.product_dir("deduplicated_shards")).read()
    dropped = read_current(spec.product_dir("dropped_documents")).read()
    catalog = Catalog.open(spec.catalog)
    dupes = catalog.query("SELECT doc_id, duplicate_of, method FROM duplicates ORDER BY doc_id")
    raw = read_current(spec.product_dir("raw_corpus"))
    return kept, dropped.sort("id"), dupes, raw.read(), raw.aux("quarantine")


@pytest.mark.integration
def test_the_data_group_on_ray_equals_the_local_engine(small_spec: Path) -> None:
    assert _data_job(small_spec, [])[0]
    expected = _outputs(small_spec, [])
    shutil.rmtree(load_spec(small_spec).data_dir)  # the ray run builds everything again

    try:
        success, logs = _data_job(small_spec, RAY)
    finally:
        ray.shutdown()
    assert success
    assert any("Connected to a local Ray" in m for m in logs), "dagster-ray never connected"
    got = _outputs(small_spec, RAY)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.equals(theirs)
    assert got[0].height > 0 and got[2].height == 2  # the planted exact and near copies
    assert got[4].height == 2  # the corpus's bad records, quarantined by Ray tasks
    assert (
        read_current(load_spec(small_spec, RAY).product_dir("raw_corpus")).manifest["engine"]
        == "ray"
    )

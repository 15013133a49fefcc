"""The document filters as a Ray Data map stage: the same kept rows, drops and decisions as
the local engine, block by block in the shards' order.

    .venv/bin/python -m pytest -q tests/data/test_ray_map.py
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from flywheel.core.settings.filters import FilterSettings
from flywheel.data.filters import apply_filters, build_filters
from flywheel.data.ray_map import filter_outcomes
from tests.conftest import TOPICS

ray = pytest.importorskip("ray")


def test_filters_on_ray_equal_the_local_engine(tmp_path: Path) -> None:
    texts = list(TOPICS.values())  # real prose and reference tables: kept and dropped ones
    files = []
    for k in range(3):
        df = pl.DataFrame({"id": [f"s{k}-{i}" for i in range(len(texts))], "text": texts})
        files.append(tmp_path / f"part-{k}.parquet")
        df.with_columns(pl.lit(k).alias("shard")).write_parquet(files[-1])
    settings = FilterSettings()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20)
    try:
        outcomes = list(filter_outcomes(files, settings, batch_rows=50))
    finally:
        ray.shutdown()
    local = [apply_filters(pl.read_parquet(f), build_filters(settings)) for f in files]
    kept, dropped, decisions = (pl.concat(part) for part in zip(*outcomes, strict=True))
    assert kept.equals(pl.concat([o.kept for o in local]))
    assert dropped.equals(pl.concat([o.dropped for o in local]))
    assert decisions.equals(pl.concat([o.decisions for o in local]))
    assert 0 < kept.height < decisions.height == 3 * len(texts)

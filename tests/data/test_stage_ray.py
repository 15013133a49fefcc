"""The document stages on ``engine: ray`` publish what ``engine: local`` does: the same raw
documents and quarantine (the corpus has bad records), the same deduplicated rows and the
same duplicates in the catalog, first against an empty index and then, after the corpus
grows, against the index the first run left.

    .venv/bin/python -m pytest -q tests/data/test_stage_ray.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.core import products as P
from flywheel.core.catalog import Catalog
from flywheel.core.spec import load_spec
from flywheel.data import stages
from tests.conftest import prose

ray = pytest.importorskip("ray")

ENGINES = {
    "local": ["engine=local"],
    "ray": ["engine=ray", "data_dir=data_ray", "catalog=catalog_ray.duckdb"],
}


def run_stages(spec) -> tuple[stages.StageResult, stages.StageResult]:
    raw = stages.run_ingest(spec, "corpus")
    stages.run_filters(spec, P.resolve_inputs(spec, P.FILTERED))
    return raw, stages.run_dedup(spec, P.resolve_inputs(spec, P.DEDUPLICATED))


def published(spec, results: tuple[stages.StageResult, stages.StageResult]) -> tuple:
    raw, result = results
    duplicates = Catalog.open(spec.catalog).query(
        "SELECT doc_id, duplicate_of, method, similarity FROM duplicates ORDER BY doc_id"
    )
    quarantine = raw.shardset.aux("quarantine")
    return result.shardset.read().sort("id"), duplicates, raw.shardset.read(), quarantine


def test_engine_ray_publishes_what_engine_local_does(small_spec: Path, corpus_jsonl: Path) -> None:
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 << 20)
    try:
        first = {e: published(s, run_stages(s)) for e, s in _specs(small_spec).items()}
        with corpus_jsonl.open("a") as f:  # new documents: copies of old ones and a fresh one
            for i, text in enumerate(prose(34)[28:]):
                f.write(json.dumps({"id": f"late{i}", "text": text}) + "\n")
            f.write(json.dumps({"id": "late_copy", "text": prose(5)[2].upper()}) + "\n")
            words = prose(5)[1].split()  # doc1 (near1 shows it passes the filters)
            words[len(words) // 3] = "ALTERED"  # a near duplicate of an indexed document
            f.write(json.dumps({"id": "late_near", "text": " ".join(words)}) + "\n")
        grown = {e: published(s, run_stages(s)) for e, s in _specs(small_spec).items()}
    finally:
        ray.shutdown()
    for runs in (first, grown):
        for mine, theirs in zip(runs["ray"], runs["local"], strict=True):
            assert mine.equals(theirs)
    assert first["ray"][3]["reason"].to_list() == ["invalid_json", "empty_text"]
    assert first["ray"][1]["method"].to_list() == ["exact", "minhash"]  # exact0, near1
    # the grown corpus met the first run's index: copies of doc28, doc29 and doc2, and a
    # near copy of doc1 (the stage gives documents ids of its own: counted by method)
    assert grown["ray"][1]["method"].value_counts(sort=True).rows() == [
        ("exact", 4),
        ("minhash", 2),
    ]


def _specs(small_spec: Path) -> dict:
    return {engine: load_spec(small_spec, overrides) for engine, overrides in ENGINES.items()}

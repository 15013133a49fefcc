"""The document plane on an unchanged corpus publishes nothing new (flywheel.data.stage_keys):
re-running ingest, filters and dedup reuses their versions, so the tokenizer and everything
after it see the same inputs; a changed file or section rebuilds and says what changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from definitions import build_definitions
from flywheel.core import keys
from flywheel.core import products as P
from flywheel.core.spec import load_spec
from flywheel.data import stages


def _run_all(spec) -> dict[str, stages.StageResult]:
    raw = stages.run_ingest(spec, "corpus")
    filtered = stages.run_filters(spec, P.resolve_inputs(spec, P.FILTERED))
    deduped = stages.run_dedup(spec, P.resolve_inputs(spec, P.DEDUPLICATED))
    return {"raw_corpus": raw, P.FILTERED: filtered, P.DEDUPLICATED: deduped}


def _versions(results: dict[str, stages.StageResult]) -> dict[str, str]:
    return {name: r.shardset.version for name, r in results.items()}


def test_an_unchanged_corpus_reuses_every_version(small_spec: Path, corpus_jsonl: Path) -> None:
    spec = load_spec(small_spec)
    first = _run_all(spec)
    assert not any(r.metadata["reused"] for r in first.values())
    os.utime(corpus_jsonl)  # touched, not changed: the key reads content, not mtimes
    again = _run_all(spec)
    assert _versions(again) == _versions(first)
    assert all(r.metadata["reused"] for r in again.values())
    assert again[P.DEDUPLICATED].metadata["rows"] == first[P.DEDUPLICATED].metadata["rows"]
    assert again[P.FILTERED].metadata["keep_rate"] == first[P.FILTERED].metadata["keep_rate"]
    for product in ("raw_corpus", P.FILTERED, P.DROPPED, P.DEDUPLICATED):
        assert len(list(spec.product_dir(product).glob("v-*"))) == 1, product


def test_a_changed_file_or_section_rebuilds_and_names_the_change(
    small_spec: Path, corpus_jsonl: Path
) -> None:
    spec = load_spec(small_spec)
    first = _versions(_run_all(spec))
    stricter = load_spec(small_spec, ["filters.gopher_quality.min_words=60"])
    refiltered = _run_all(stricter)
    assert refiltered["raw_corpus"].metadata["reused"]  # ingest does not read filters
    assert refiltered[P.FILTERED].shardset.version != first[P.FILTERED]
    assert refiltered[P.FILTERED].metadata["build_changes"].startswith("spec filters changed")
    assert (
        "input filtered_documents changed" in refiltered[P.DEDUPLICATED].metadata["build_changes"]
    )
    with corpus_jsonl.open("a") as f:
        f.write(json.dumps({"id": "late", "text": "A new document arrives. " * 40}) + "\n")
    grown = _run_all(stricter)
    raw = grown["raw_corpus"]
    assert raw.shardset.version != first["raw_corpus"]
    assert raw.metadata["build_changes"].startswith("source files changed: sha256 ")
    assert raw.shardset.manifest[keys.KEY]["data:source files"].startswith("sha256:")
    assert grown[P.FILTERED].metadata["build_changes"].startswith("input raw_corpus changed")


def test_rematerializing_the_data_job_publishes_no_new_version(small_spec: Path) -> None:
    defs = build_definitions(str(small_spec))
    instance = dg.DagsterInstance.ephemeral()
    runs = [defs.resolve_job_def("data_job").execute_in_process(instance=instance) for _ in "ab"]

    def versions(result) -> dict[str, str]:
        return {
            e.asset_key.to_user_string(): e.materialization.tags["dagster/data_version"]
            for e in result.get_asset_materialization_events()
        }

    assert versions(runs[1]) == versions(runs[0])
    reused = {
        e.asset_key.to_user_string(): e.materialization.metadata["reused"].value
        for e in runs[1].get_asset_materialization_events()
    }
    assert reused == {"raw_corpus": True, P.FILTERED: True, P.DEDUPLICATED: True}

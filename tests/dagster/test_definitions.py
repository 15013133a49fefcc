"""The Dagster layer: definitions load, the graph matches the spec, and it materializes."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from definitions import build_definitions
from flywheel.core.catalog import Catalog
from flywheel.core.shards import read_current
from flywheel.core.spec import load_spec
from tests.conftest import write_spec


def test_default_definitions_load() -> None:
    defs = build_definitions(str(Path(__file__).resolve().parents[2] / "flywheel.yaml"))
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw_python_docs", "filtered_documents", "deduplicated_shards"} <= keys
    job = defs.resolve_job_def("flywheel_job")
    selected = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert {"raw_python_docs", "sft_checkpoint", "eval_scores"} <= selected
    # The flywheel's partitioned cycles run as cycle_job, one cycle at a time, never here.
    assert "promoted_model" in keys and "promoted_model" not in selected


def test_graph_follows_the_spec(tmp_path: Path, corpus_jsonl: Path) -> None:
    spec = write_spec(
        tmp_path,
        f"""
        sources:
          - {{name: alpha, kind: jsonl, path: {corpus_jsonl.name}}}
          - {{name: beta, kind: python_env, include: [pydoc_topics]}}
        """,
    )
    graph = build_definitions(str(spec)).resolve_asset_graph()
    filtered = graph.get(dg.AssetKey("filtered_documents"))
    assert filtered.parent_keys == {dg.AssetKey("raw_alpha"), dg.AssetKey("raw_beta")}
    dedup = graph.get(dg.AssetKey("deduplicated_shards"))
    assert dedup.parent_keys == {dg.AssetKey("filtered_documents")}
    raw = graph.get(dg.AssetKey("raw_alpha"))
    assert raw.group_name == "ingest" and dedup.group_name == "curate"
    assert "parquet" in raw.kinds and raw.owners == ["team:data"]
    assert raw.description and dedup.description
    checks = {c.name for c in graph.asset_check_keys}
    documents = {c for c in graph.asset_check_keys if c.name == "gx_document_suite"}
    assert len(documents) == 4  # raw_alpha, raw_beta, filtered, deduplicated
    assert checks - {"gx_document_suite"} == {
        "champion_verified",
        "champion_is_best",
        "not_empty",
        "no_eval_prompts",
        "no_duplicates",
    }


def test_agent_assets_exist_only_with_an_agent_section(tmp_path: Path) -> None:
    env = '{name: guess, class_path: "flywheel.envs.guess:NumberGuess"}'
    plain = write_spec(tmp_path, f"environments: [{env}]\n")
    graph = build_definitions(str(plain)).resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert "accepted_generations" in keys and not {"trajectories", "accepted_trajectories"} & keys
    agent = write_spec(tmp_path, f"environments: [{env}]\nagent: {{environment: guess}}\n")
    defs = build_definitions(str(agent))
    graph = defs.resolve_asset_graph()
    played = graph.get(dg.AssetKey("trajectories"))
    accepted = graph.get(dg.AssetKey("accepted_trajectories"))
    assert played.parent_keys == {dg.AssetKey("promoted_model")}
    assert accepted.parent_keys == {dg.AssetKey("trajectories")}
    assert played.group_name == accepted.group_name == "flywheel"
    assert played.partitions_def == graph.get(dg.AssetKey("promoted_model")).partitions_def
    assert played.pools == {"gpu"} and accepted.pools == set()
    cycle_job = defs.resolve_job_def("cycle_job")
    assert played.key in cycle_job.asset_layer.selected_asset_keys


@pytest.mark.integration
def test_data_group_materializes_in_process(small_spec: Path) -> None:
    defs = build_definitions(str(small_spec))
    result = defs.resolve_job_def("data_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    mats = {e.asset_key.to_user_string(): e for e in result.get_asset_materialization_events()}
    assert set(mats) == {"raw_corpus", "filtered_documents", "deduplicated_shards"}
    raw_meta = mats["raw_corpus"].materialization.metadata
    assert raw_meta["rows"].value == 32 and raw_meta["quarantined"].value == 2
    dedup_meta = mats["deduplicated_shards"].materialization.metadata
    assert dedup_meta["removed_exact"].value == 1
    assert dedup_meta["removed_minhash"].value == 1
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 3 and all(c.passed for c in checks)

    spec = load_spec(small_spec)
    kept = read_current(spec.product_dir("deduplicated_shards")).read()
    assert {"doc0", "doc1"} <= set(kept["source_id"]) and "exact0" not in set(kept["source_id"])
    catalog = Catalog.open(spec.catalog)
    near = catalog.query("SELECT doc_id FROM documents WHERE source_id = 'near1'")["doc_id"][0]
    facts = catalog.document_lineage(near)
    assert facts["status"].startswith("removed as near-duplicate of corpus-")
    assert facts["source"] == "corpus" and facts["path"].endswith("corpus.jsonl")
    assert len(facts["cluster"]) == 2


@pytest.mark.integration
def test_failing_blocking_check_stops_downstream(small_spec: Path) -> None:
    defs = build_definitions(str(small_spec), ["validation.max_chars=100"])
    result = defs.resolve_job_def("data_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not result.success
    mats = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert mats == {"raw_corpus"}
    [check] = result.get_asset_check_evaluations()
    assert not check.passed
    failed = check.metadata["expect_column_values_to_be_between:n_chars"].value
    assert failed.endswith("of 32 rows failed") and not failed.startswith("0 ")
    assert "expect_column_values_to_be_between on n_chars" in check.description


def test_validation_frame_flags_duplicates(tmp_path: Path) -> None:
    from flywheel.core.shards import ShardWriter
    from flywheel.data.validation import validate_shardset

    with ShardWriter(tmp_path / "p") as w:
        w.write(
            pl.DataFrame(
                {
                    "id": ["a", "b", "c"],
                    "source": ["s"] * 3,
                    "text": ["Hello  World", "hello world", "other"],
                }
            )
        )
        shards = w.commit()
    report = validate_shardset(shards, "dedup", unique_text=True)
    assert not report.success
    [failure] = report.failures
    assert failure.column == "norm_hash" and failure.unexpected == 2
    assert validate_shardset(shards, "raw").success

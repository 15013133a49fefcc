"""The flywheel command line, run in-process on a materialized small spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.cli import main
from flywheel.core import products as P
from flywheel.core.catalog import Catalog
from flywheel.core.spec import load_spec
from flywheel.data import stages as pipeline
from tests.conftest import write_spec


def test_check_valid_and_invalid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = write_spec(tmp_path, "name: ok\n")
    assert main(["check", str(good)]) == 0
    assert "spec 'ok' is valid" in capsys.readouterr().out
    bad = write_spec(tmp_path, "filters:\n  gopher_quality:\n    min_wrds: 3\n")
    assert main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "filters.gopher_quality.min_wrds: unknown key (did you mean 'min_words'?)" in err
    assert "Traceback" not in err


def test_check_with_overrides_and_explain(tmp_path: Path, capsys) -> None:
    spec = write_spec(tmp_path, "name: ok\n")
    assert main(["check", str(spec), "dedup.threshold=2"]) == 2
    assert "dedup.threshold" in capsys.readouterr().err
    assert main(["check", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "dedup.threshold = 0.8  #" in out and "ingest.batch_rows = 2000  #" in out


def test_summary_and_lineage(small_spec: Path, capsys: pytest.CaptureFixture) -> None:
    spec = load_spec(small_spec)
    assert main(["summary", "--spec", str(small_spec)]) == 0
    assert "not materialized" in capsys.readouterr().out
    pipeline.run_ingest(spec, "corpus")
    pipeline.run_filters(spec, P.resolve_inputs(spec, P.FILTERED))
    pipeline.run_dedup(spec, P.resolve_inputs(spec, P.DEDUPLICATED))
    assert main(["summary", "--spec", str(small_spec), "--json"]) == 0
    rows = {r["product"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["raw_corpus"]["rows"] == 32
    assert rows["deduplicated_shards"]["rows"] == rows["filtered_documents"]["rows"] - 2

    catalog = Catalog.open(spec.catalog)
    exact = catalog.query("SELECT doc_id FROM documents WHERE source_id = 'exact0'")["doc_id"][0]
    assert main(["lineage", exact, "--spec", str(small_spec), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["status"].startswith("removed as exact duplicate of corpus-")
    assert facts["offset"] > 0 and facts["source_id"] == "exact0"
    assert main(["lineage", "nope", "--spec", str(small_spec)]) == 2
    assert "not in the catalog" in capsys.readouterr().err


@pytest.mark.integration
def test_train_stages_by_hand_and_checkpoint_lineage(small_spec: Path, capsys) -> None:
    """`flywheel train STAGE` runs the whole training plane without Dagster."""
    spec = load_spec(small_spec)
    pipeline.run_ingest(spec, "corpus")
    pipeline.run_filters(spec, P.resolve_inputs(spec, P.FILTERED))
    pipeline.run_dedup(spec, P.resolve_inputs(spec, P.DEDUPLICATED))
    for stage in ("tokenizer", "pack", "pretrain", "sft", "eval"):
        assert (
            main(["train", stage, "--spec", str(small_spec), "--set", "pretrain.steps=4"]) == 0
        ), stage
    out = capsys.readouterr().out
    assert "tokenizer v-" in out and "tokenized_dataset v-" in out

    from flywheel.core import artifacts

    sft = artifacts.read_current(spec.product_dir("sft_checkpoint"))
    assert main(["checkpoint", sft.version, "--spec", str(small_spec)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["sft", sft.version]
    assert lines[1].split()[0] == "pretrain" and "tokenized_dataset=v-" in lines[1]
    assert "training documents in tokenized_dataset" in lines[2]
    assert main(["summary", "--spec", str(small_spec)]) == 0
    summary = capsys.readouterr().out
    assert "4 steps, loss" in summary and "accuracy/arithmetic" in summary
    assert main(["checkpoint", "v-nope", "--spec", str(small_spec)]) == 2


def test_train_rejects_an_unknown_stage(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "rl"])
    assert "invalid choice: 'rl'" in capsys.readouterr().err

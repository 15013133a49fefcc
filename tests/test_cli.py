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


def test_run_and_check_take_flywheel_set_then_the_command_line(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``FLYWHEEL_SET=... make demo`` must run what ``flywheel run --set`` runs, not drop it."""
    from flywheel.project import runner

    spec = write_spec(tmp_path, "name: ok\n")
    monkeypatch.setenv("FLYWHEEL_SET", json.dumps(["name=from-env", "dedup.threshold=0.9"]))
    assert main(["check", str(spec)]) == 0
    assert "spec 'from-env' is valid" in capsys.readouterr().out
    assert main(["check", str(spec), "name=from-args"]) == 0  # the command line wins
    assert "spec 'from-args' is valid" in capsys.readouterr().out

    handed: list[list[str]] = []
    monkeypatch.setattr(runner, "run", lambda _f, overrides, **_: handed.append(overrides) or 0)
    assert main(["run", "--spec", str(spec), "--set", "pretrain.steps=7"]) == 0
    assert handed == [["name=from-env", "dedup.threshold=0.9", "pretrain.steps=7"]]

    monkeypatch.setenv("FLYWHEEL_SET", json.dumps(["dedup.threshold=2"]))
    assert main(["run", "--spec", str(spec)]) == 2  # a bad one stops before any process
    assert "dedup.threshold" in capsys.readouterr().err and len(handed) == 1


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
    # The source file fed the tokenized dataset, pre-training and the SFT model on top of it;
    # the SFT checkpoint's folder is its lineage.
    corpus = str(spec.base_dir / "corpus.jsonl")
    assert main(["lineage", corpus, "--spec", str(small_spec), "--json"]) == 0
    fed = json.loads(capsys.readouterr().out)
    assert [c["stage"] for c in fed["checkpoints"]] == ["pretrain", "sft"]
    assert fed["checkpoints"][1]["checkpoint"] == sft.version
    assert any(t["split"] == "train" and t["documents"] > 0 for t in fed["tokenized"])
    assert main(["lineage", str(sft.path), "--spec", str(small_spec), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["checkpoint"] == sft.version and facts["path"] == str(sft.path)


def test_train_rejects_an_unknown_stage(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "rl"])
    assert "invalid choice: 'rl'" in capsys.readouterr().err


def test_lineage_by_source_id_and_path(tmp_path: Path, corpus_jsonl: Path, capsys) -> None:
    """The user's own keys: a record's id as the source file had it (``SOURCE:ID`` when two
    sources share it), the source file's path, an artifact's directory."""
    spec_file = write_spec(
        tmp_path,
        f"""
        name: keys
        data_dir: data
        catalog: catalog.duckdb
        sources:
          - {{name: corpus, kind: jsonl, path: {corpus_jsonl.name}}}
          - {{name: mirror, kind: jsonl, path: {corpus_jsonl}}}
        filters: {{gopher_quality: {{min_words: 20}}}}
        """,
    )
    spec = load_spec(spec_file)
    for source in ("corpus", "mirror"):
        pipeline.run_ingest(spec, source)
    pipeline.run_filters(spec, P.resolve_inputs(spec, P.FILTERED))
    pipeline.run_dedup(spec, P.resolve_inputs(spec, P.DEDUPLICATED))

    def lineage(key: str) -> tuple[int, str, str]:
        code = main(["lineage", key, "--spec", str(spec_file), "--json"])
        out, err = capsys.readouterr()
        return code, out, err

    # doc3 is in both sources: ambiguous, each listed by its own key.
    code, _, err = lineage("doc3")
    ids = Catalog.open(spec.catalog).query(
        "SELECT doc_id FROM documents WHERE source_id = 'doc3' ORDER BY doc_id"
    )["doc_id"]
    assert code == 2 and "'doc3' names 2 things" in err
    assert all(f"  {doc_id}  (record 'doc3' of source" in err for doc_id in ids)
    code, out, _ = lineage("mirror:doc3")
    facts = json.loads(out)
    assert code == 0 and (facts["source"], facts["source_id"]) == ("mirror", "doc3")
    assert facts["doc_id"] in ids and facts["path"] == str(corpus_jsonl)

    # The source file, relative to the spec's folder (not the working directory), then
    # absolute: its 32 documents and 2 quarantined records, and what became of them.
    code, out, _ = lineage(f"./{corpus_jsonl.name}")
    facts = json.loads(out)
    assert code == 0 and facts["paths"] == [str(corpus_jsonl)]
    assert facts["documents"] == 64  # both sources read the same file
    assert facts["quarantined"] == {"invalid_json": 2, "empty_text": 2}
    assert sum(facts["status"].values()) == 64 and facts["status"]["removed as exact duplicate"]
    assert json.loads(lineage(str(corpus_jsonl))[1])["documents"] == 64
    main(["lineage", str(corpus_jsonl), "--spec", str(spec_file)])
    text = capsys.readouterr().out
    assert f"source file: {corpus_jsonl}" in text and "documents: 64" in text

    # An artifact: a product folder names its CURRENT version; the version's folder itself.
    dedup = spec.product_dir(P.DEDUPLICATED)
    code, out, _ = lineage(str(dedup))
    facts = json.loads(out)
    version = (dedup / "CURRENT").read_text().strip()
    assert code == 0 and (facts["product"], facts["version"]) == (P.DEDUPLICATED, version)
    assert facts["current"] and facts["inputs"][P.FILTERED].startswith("v-")
    assert json.loads(lineage(str(dedup / version))[1])["version"] == version
    assert json.loads(lineage(version)[1])["path"] == str(dedup / version)

    code, _, err = lineage("no-such-id")
    assert code == 2 and "tried a cycle number" in err and "a source file or folder" in err

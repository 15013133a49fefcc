"""The cycle products made with a model are keyed too: a cycle's eval report and its
generations are reused for the same inputs and rebuilt, saying what changed, for a changed
task or prompt file, spec section or candidate. The model is the tiny random-init checkpoint
of tests/loop/eval/conftest.py (seconds on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.core import artifacts
from flywheel.core import products as P
from flywheel.core.spec import parse_spec
from flywheel.loop.eval.scores import evaluate
from flywheel.loop.generate.generations import generate_cycle
from tests.loop.eval.conftest import build_pretrained, build_tokenized


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("model") / "data"
    build_tokenized(data, build_pretrained(data).path)
    return data


def _spec(tmp_path: Path, **sections):
    raw = {
        "data_dir": "data",
        "catalog": "catalog.duckdb",
        "eval": {
            "perplexity_batches": 1,
            "micro_batch": 4,
            "tasks": [{"name": "qa", "kind": "jsonl", "path": "qa.jsonl", "max_new_tokens": 2}],
        },
        "generation": {
            "prompts": {"kind": "jsonl", "path": "prompts.jsonl"},
            "samples_per_prompt": 1,
            "max_new_tokens": 2,
        },
    }
    for name, value in sections.items():
        raw[name] = {**raw.get(name, {}), **value}
    return parse_spec(raw, tmp_path / "flywheel.yaml")


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _handed(model_dir: Path, version: str | None = None) -> dict:
    models = model_dir / "pretrained_checkpoint"
    model = artifacts.verify(models / version) if version else artifacts.read_current(models)
    tokenized = P.read_at(model_dir / "tokenized_dataset", P.TOKENIZED)
    return {P.CYCLE_CHECKPOINT: model, P.TOKENIZED: tokenized}


def test_a_cycles_eval_is_reused_or_redone_by_its_key(tmp_path: Path, model_dir: Path) -> None:
    _write(tmp_path / "qa.jsonl", [{"prompt": "What is 1 + 1?", "answer": "2"}])
    spec = _spec(tmp_path)
    handed = _handed(model_dir)
    first = evaluate(spec, handed, cycle=1)
    assert first["reused"] is False
    again = evaluate(spec, handed, cycle=1)  # (a) the same candidate, dataset and tasks
    assert (again["version"], again["reused"]) == (first["version"], True)
    assert again["metadata"]["n/qa"] == 1
    unrelated = _spec(tmp_path, generation={"temperature": 0.1})
    assert evaluate(unrelated, handed, cycle=1)["version"] == first["version"]
    _write(tmp_path / "qa.jsonl", [{"prompt": "What is 2 + 2?", "answer": "4"}] * 2)
    edited = evaluate(spec, handed, cycle=1)  # (b) the task file's content changed
    assert edited["version"] != first["version"] and edited["metadata"]["n/qa"] == 2
    assert edited["metadata"]["build_changes"].startswith("eval task qa changed: sha256 ")
    other = build_pretrained(model_dir.parent / "other", seed=1)  # (b) a new candidate
    moved = model_dir / "pretrained_checkpoint" / other.version
    other.path.rename(moved)
    rescored = evaluate(spec, _handed(model_dir, other.version), cycle=1)
    assert rescored["metadata"]["checkpoint"] == other.version
    assert "input cycle_checkpoint changed" in rescored["metadata"]["build_changes"]


def test_a_cycles_generations_are_reused_or_redone_by_their_key(
    tmp_path: Path, model_dir: Path
) -> None:
    _write(tmp_path / "prompts.jsonl", [{"prompt": "What is 1 + 1?", "answer": "2"}])
    _write(tmp_path / "qa.jsonl", [{"prompt": "What is 9 + 9?", "answer": "18"}])
    spec = _spec(tmp_path)
    champion = {P.PROMOTED: _handed(model_dir)[P.CYCLE_CHECKPOINT]}
    first = generate_cycle(spec, 1, champion)
    again = generate_cycle(spec, 1, champion)  # (a) the same champion, settings, prompts
    assert (again["version"], again["reused"]) == (first["version"], True)
    assert generate_cycle(_spec(tmp_path, eval={"micro_batch": 2}), 1, champion)["reused"]
    _write(tmp_path / "prompts.jsonl", [{"prompt": "What is 3 + 3?", "answer": "6"}])
    edited = generate_cycle(spec, 1, champion)  # (b) the prompt file's content changed
    assert not edited["reused"] and edited["version"] != first["version"]
    assert edited["metadata"]["build_changes"].startswith("prompts changed: sha256 ")
    hotter = generate_cycle(_spec(tmp_path, generation={"temperature": 0.1}), 1, champion)
    assert hotter["metadata"]["build_changes"].startswith("spec generation changed")

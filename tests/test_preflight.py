"""Preflight: what a spec refers to is checked before a run, every problem reported at once.

.venv/bin/python -m pytest -q tests/test_preflight.py
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from flywheel.cli import main
from flywheel.core.spec import Spec, load_spec
from flywheel.preflight import Problem, errors, preflight
from flywheel.preflight.paths import KINDS, READ_WHEN, path_fields
from flywheel.preflight.references import check_references
from tests.conftest import write_spec


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _by_key(problems: list[Problem]) -> dict[str, Problem]:
    return {p.key: p for p in problems}


def test_minimal_spec_passes(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, "name: minimal\ncycles: {max_cycles: 2}\n"))
    assert preflight(spec) == []
    assert spec.cycles.gate.metric == f"accuracy/{spec.eval.tasks[0].name}"


def test_the_shared_test_specs_pass(small_spec: Path, flywheel_spec: Path) -> None:
    assert errors(preflight(load_spec(small_spec))) == []
    assert errors(preflight(load_spec(flywheel_spec))) == []


BROKEN = """
name: broken
sources:
  - {name: gone, kind: jsonl, path: nowhere/missing.jsonl}
  - {name: globbed, kind: jsonl, path: "shards/*.jsonl.gz"}
sft:
  data: {kind: jsonl, path: sft_missing.jsonl}
eval:
  tasks: [{name: qa, kind: jsonl, path: all_bad.jsonl}]
acceptance:
  verifier: {kind: python, function: "no_such_module_xyz:judge"}
cycles:
  gate: {metric: accuracy/addition}
"""


def test_every_problem_class_is_reported_in_one_run(tmp_path: Path, capsys) -> None:
    _jsonl(tmp_path / "all_bad.jsonl", ["{not json", {"prompt": "no answer"}, {"answer": "1"}])
    (tmp_path / "shards").mkdir()  # the glob's directory exists, no file matches
    path = write_spec(tmp_path, BROKEN)
    problems = _by_key(preflight(load_spec(path)))
    assert all(p.level == "error" for p in problems.values()), problems
    assert set(problems) == {
        "sources[0].path",
        "sources[1].path",
        "sft.data.path",
        "eval.tasks[0].path",
        "acceptance.verifier.function",
        "cycles.gate.metric",
    }
    assert "nowhere/missing.jsonl" in problems["sources[0].path"].message
    assert "no input files match 'shards/*.jsonl.gz'" in problems["sources[1].path"].message
    assert problems["sft.data.path"].file == tmp_path / "sft_missing.jsonl"
    assert problems["sft.data.path"].message == "no such file"
    bad = problems["eval.tasks[0].path"]
    assert bad.file == tmp_path / "all_bad.jsonl"
    assert "all of the first 3 record(s) are bad" in bad.message
    assert "invalid_json=1" in bad.message and "missing_answer=1" in bad.message
    assert "cannot import 'no_such_module_xyz'" in problems["acceptance.verifier.function"].message
    gate = problems["cycles.gate.metric"].message
    assert "'accuracy/addition' is not a metric eval produces" in gate
    assert "accuracy/qa" in gate  # it says what eval does produce

    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.count("error: ") == 6 and "6 error(s)" in out
    assert "error: sft.data.path (" in out


def test_samples_warn_with_counts_and_error_when_nothing_is_usable(tmp_path: Path) -> None:
    good = {"id": "a", "text": "some text"}
    (tmp_path / "docs").mkdir()
    _jsonl(tmp_path / "docs/mixed.jsonl", [good, {"id": "b"}, {"id": "c", "text": 3}, "[1]"])
    _jsonl(tmp_path / "docs/empty_texts.jsonl", [{"text": "  "}, {"text": ""}])
    rows = [{"prompt": "p", "response": ""}, {"instruction": "i"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "sft.parquet")
    _jsonl(tmp_path / "tasks.jsonl", [{"prompt": "2+2?", "answer": "4"}, {"prompt": "x"}])
    spec = load_spec(
        write_spec(
            tmp_path,
            """
            sources:
              - {name: docs, kind: jsonl, path: "docs/*.jsonl", text_field: text}
            sft:
              data: {kind: parquet, path: sft.parquet}
            eval:
              tasks: [{name: qa, kind: jsonl, path: tasks.jsonl}]
            cycles: {gate: {metric: accuracy/qa}}
            """,
        )
    )
    problems = preflight(spec)
    found = {(p.level, p.key, p.file.name if p.file else None): p.message for p in problems}
    mixed = found["warning", "sources[0].path", "mixed.jsonl"]
    assert mixed.startswith("3 of the first 4 record(s) would be quarantined")
    assert "missing_text=1" in mixed and "text_not_string=1" in mixed
    assert "not_an_object=1" in mixed
    assert "empty_text=2" in found["error", "sources[0].path", "empty_texts.jsonl"]
    sft = found["error", "sft.data.path", "sft.parquet"]
    # Parquet gives every row every column: the second row's prompt is there, and null
    assert "empty_response=1" in sft and "missing_prompt=1" in sft
    assert "missing_answer=1" in found["warning", "eval.tasks[0].path", "tasks.jsonl"]
    assert len(problems) == 4


def test_a_sample_is_the_head_of_the_file(tmp_path: Path) -> None:
    rows = [{"text": f"doc {i}"} for i in range(60)] + ["{broken"] * 10
    _jsonl(tmp_path / "big.jsonl", rows)
    spec = load_spec(write_spec(tmp_path, "sources: [{name: big, kind: jsonl, path: big.jsonl}]\n"))
    assert preflight(spec) == []  # the bad lines are past the first 50


def test_verifier_function_is_imported_from_the_spec_directory(tmp_path: Path) -> None:
    (tmp_path / "myverifiers_pf.py").write_text(
        "def ok(prompt, completion, answer):\n    return True\n"
        "def two(prompt, completion):\n    return True\n"
    )
    (tmp_path / "broken_pf.py").write_text("def oops(:\n")
    problems = {}
    for fn in ("myverifiers_pf:ok", "myverifiers_pf:two", "myverifiers_pf:nope", "broken_pf:f"):
        body = f"acceptance: {{verifier: {{kind: python, function: '{fn}'}}}}\n"
        found = preflight(load_spec(write_spec(tmp_path, body)))
        problems[fn] = [p for p in found if p.key == "acceptance.verifier.function"]
    assert problems["myverifiers_pf:ok"] == []
    assert "cannot be called as fn(prompt, completion, answer)" in str(
        problems["myverifiers_pf:two"]
    )
    assert "has no 'nope'" in problems["myverifiers_pf:nope"][0].message
    (syntax,) = problems["broken_pf:f"]
    assert "SyntaxError" in syntax.message and syntax.file == tmp_path / "broken_pf.py"


def test_prompts_without_answers_cannot_pass_a_reference_verifier(tmp_path: Path) -> None:
    _jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Tell me about {i}"} for i in range(5)])
    body = "generation: {{prompts: {{kind: jsonl, path: prompts.jsonl}}}}\n"
    body += "acceptance: {{verifier: {{kind: {kind}}}}}\n"
    exact = preflight(load_spec(write_spec(tmp_path, body.format(kind="exact"))))
    (problem,) = exact
    assert (problem.level, problem.key) == ("error", "acceptance.verifier.kind")
    assert "no sampled prompt has one" in problem.message
    assert preflight(load_spec(write_spec(tmp_path, body.format(kind="self_consistency")))) == []


def test_preference_method_is_checked_against_its_settings(tmp_path: Path) -> None:
    dpo = "generation: {samples_per_prompt: 1}\ncycles: {preference: dpo}\n"
    (problem,) = preflight(load_spec(write_spec(tmp_path, dpo)))
    assert problem.key == "generation.samples_per_prompt" and "no pairs" in problem.message
    grpo = """
    acceptance: {verifier: {kind: self_consistency}}
    cycles:
      preference: grpo
      preference_train: {num_generations: 3, micro_batch: 4}
    """
    found = _by_key(preflight(load_spec(write_spec(tmp_path, grpo))))
    assert set(found) == {"acceptance.verifier.kind", "cycles.preference_train"}
    assert "not a multiple of num_generations" in found["cycles.preference_train"].message
    unused = "cycles: {preference_train: {steps: 7}}\n"
    (problem,) = preflight(load_spec(write_spec(tmp_path, unused)))
    assert problem.level == "warning" and "cycles.preference is 'none'" in problem.message


def test_an_agents_grpo_method_is_checked_against_the_preference_settings(
    tmp_path: Path,
) -> None:
    # cycles.method grpo trains with cycles.preference_train: checked, not "set but not read"
    agent = """
    environments: [{name: guess, class_path: "flywheel.envs.guess:NumberGuess"}]
    agent: {environment: guess}
    sft: {micro_batch: 4}
    cycles: {method: sft+grpo, preference_train: {num_generations: %d}}
    """
    found = _by_key(check_references(load_spec(write_spec(tmp_path, agent % 3))))
    assert "not a multiple of num_generations (3)" in found["cycles.preference_train"].message
    assert found["cycles.preference_train"].level == "error"
    fine = check_references(load_spec(write_spec(tmp_path, agent % 2)))
    assert "cycles.preference_train" not in _by_key(fine)


def test_lora_target_modules_are_checked_against_the_llama(tmp_path: Path) -> None:
    body = """
    sft: {lora: {enabled: true, target_modules: [q_proj, qkv_proj]}}
    cycles:
      train: {lora: {enabled: true}}
      ppo: {lora: {enabled: false, target_modules: [nonsense]}}
    """
    (problem,) = preflight(load_spec(write_spec(tmp_path, body)))  # a block that is off: fine
    assert (problem.level, problem.key) == ("error", "sft.lora.target_modules")
    assert "['qkv_proj'] name no module of a llama model" in problem.message
    assert "down_proj" in problem.message  # what it could have named
    other = body.replace("sft:", "model: {config: {model_type: gpt2}}\n    sft:")
    assert preflight(load_spec(write_spec(tmp_path, other))) == []  # checked at stage start


def test_references_between_settings(tmp_path: Path) -> None:
    body = """
    eval:
      tasks:
        - {name: a, kind: arithmetic, verifier: regex}
        - {name: a, kind: addition, pattern: "x"}
    acceptance: {verifier: {kind: self_consistency, min_votes: 5}}
    cycles: {gate: {metric: perplexity}}
    """
    found = {(p.level, p.key): p.message for p in preflight(load_spec(write_spec(tmp_path, body)))}
    assert set(found) == {  # a task's pattern is an alias of its verifier's
        ("error", "eval.tasks[0].verifier.pattern"),
        ("error", "eval.tasks[1].name"),
        ("warning", "eval.tasks[1].verifier.pattern"),
        ("error", "acceptance.verifier.min_votes"),
        ("warning", "cycles.gate.mode"),
    }
    assert "use 'min'" in found["warning", "cycles.gate.mode"]


def test_paths_of_the_wrong_kind_and_paths_nothing_reads(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_text("x")
    (tmp_path / "tok").mkdir()
    body = """
    model: {path: weights.bin}
    tokenizer: {path: tok}
    sft: {accelerate_config: nowhere.yaml, data: {kind: arithmetic, path: data.jsonl}}
    """
    found = {(p.level, p.key): p for p in preflight(load_spec(write_spec(tmp_path, body)))}
    assert set(found) == {
        ("error", "model.path"),
        ("error", "tokenizer.path"),
        ("error", "sft.accelerate_config"),
        ("warning", "sft.data.path"),
    }
    assert found["error", "model.path"].message == "is a file, not a directory"
    assert "has no tokenizer.json" in found["error", "tokenizer.path"].message
    assert found["error", "sft.accelerate_config"].file == tmp_path / "nowhere.yaml"
    assert "only kind jsonl/parquet" in found["warning", "sft.data.path"].message


# -- every Path field of the settings is visited ----------------------------------------------
def _declared_path_fields(model: type[BaseModel], seen: set[type] | None = None) -> set[tuple]:
    """(model, field) for every Path-annotated field reachable from ``model``'s annotations."""
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    found = set()
    for name, field in model.model_fields.items():
        for arg in _flatten(field.annotation):
            if isinstance(arg, type) and issubclass(arg, Path):
                found.add((model, name))
            elif isinstance(arg, type) and issubclass(arg, BaseModel):
                found |= _declared_path_fields(arg, seen)
    return found


def _flatten(annotation: object) -> list[object]:
    args = typing.get_args(annotation)
    return [annotation] if not args else [a for arg in args for a in _flatten(arg)]


def test_every_path_field_of_the_settings_is_visited(tmp_path: Path) -> None:
    declared = _declared_path_fields(Spec)
    assert len(declared) >= 10  # data_dir, catalog, tokenizer, model, sft data, eval, ...
    # A spec where every list that holds a model holds one, so each model class is reached.
    body = """
    sft: {data: {extra: [{kind: arithmetic}]}}
    eval: {tasks: [{name: t}]}
    """
    spec = load_spec(write_spec(tmp_path, body))
    visited = {(type(f.owner), f.name) for f in path_fields(spec)}
    # a field is declared on the class that owns it or on a base class of it
    covered = {
        (model, name)
        for model, name in declared
        if any(issubclass(owner, model) and n == name for owner, n in visited)
    }
    assert covered == declared
    # the tables name real fields only (a renamed field must not leave a stale entry)
    for model, name in [*KINDS, *READ_WHEN]:
        assert name in model.model_fields, (model, name)


def test_a_new_path_field_is_found_without_listing_it() -> None:
    class Inner(BaseModel):
        weights: Path | None = Path("w.bin")
        more: list[Path] = [Path("a"), Path("b")]

    class Outer(BaseModel):
        inner: Inner = Inner()
        items: list[Inner] = [Inner()]

    keys = [f.key for f in path_fields(Outer())]
    assert keys == [
        "inner.weights",
        "inner.more[0]",
        "inner.more[1]",
        "items[0].weights",
        "items[0].more[0]",
        "items[0].more[1]",
    ]


@pytest.mark.parametrize("spec_body", ["name: ok\n"])
def test_check_prints_valid_with_no_problems(tmp_path: Path, capsys, spec_body: str) -> None:
    assert main(["check", str(write_spec(tmp_path, spec_body))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("spec 'ok' is valid:")


def test_parquet_and_text_file_sources_are_sampled_with_the_ingest_readers(
    tmp_path: Path,
) -> None:
    pq.write_table(pa.table({"body": ["a text"]}), tmp_path / "no_text_column.parquet")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/good.txt").write_text("a note")
    (tmp_path / "notes/latin1.txt").write_bytes(b"caf\xe9")
    body = """
    sources:
      - {name: table, kind: parquet, path: no_text_column.parquet}
      - {name: notes, kind: text_files, path: notes}
      - {name: nodir, kind: text_files, path: missing_dir}
    """
    found = {p.key: p for p in preflight(load_spec(write_spec(tmp_path, body)))}
    assert found["sources[0].path"].level == "error"
    assert "has no column 'text'" in found["sources[0].path"].message
    notes = found["sources[1].path"]
    assert (notes.level, notes.file) == ("warning", tmp_path / "notes")
    assert "1 of the first 2 record(s) would be quarantined (invalid_utf8=1)" in notes.message
    assert "is not a directory" in found["sources[2].path"].message


def test_a_run_stops_before_launching_on_a_spec_with_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from jobs import run

    spec = write_spec(tmp_path, "sources: [{name: gone, kind: jsonl, path: gone.jsonl}]\n")
    monkeypatch.setenv("FLYWHEEL_SPEC", str(spec))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # it stops before it needs one
    assert run.main([]) == 1
    out = capsys.readouterr().out
    assert "[flywheel] error: sources[0].path" in out and "not started" in out

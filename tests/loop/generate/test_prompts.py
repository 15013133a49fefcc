"""Cycle prompts: drawn per cycle, ids stable, eval prompts and duplicates quarantined."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest

from flywheel.core.settings.loop import PromptSource
from flywheel.core.spec import load_spec
from flywheel.loop.prompts import eval_prompts, load_prompts, prompt_id


def test_builtin_prompts_are_seeded_by_cycle() -> None:
    source = PromptSource(kind="addition", num_prompts=20, min_digits=2, max_digits=3, width=4)
    one, again, two = (load_prompts(source, c) for c in (1, 1, 2))
    assert one.examples == again.examples
    assert one.examples != two.examples  # a new cycle sees new problems
    ex = one.examples[0]
    assert set(ex) == {"prompt_id", "prompt", "answer"}
    assert ex["prompt_id"] == hashlib.sha1(ex["prompt"].encode()).hexdigest()[:16]
    a, b = (int(x[::-1]) for x in ex["prompt"].split("+"))
    assert int(ex["answer"][::-1]) == a + b  # the addition generator's reversed answers


def test_duplicate_and_eval_prompts_are_quarantined() -> None:
    # 0..3 + 0..3: 16 distinct problems, so 60 draws must repeat some.
    source = PromptSource(kind="arithmetic", num_prompts=60, max_operand=3, seed=1)
    first = load_prompts(source, 0)
    prompts = [e["prompt"] for e in first.examples]
    assert len(prompts) == len(set(prompts)) <= 32
    assert first.counts["quarantined/duplicate_prompt"] == 60 - len(prompts)
    leaked = {f"  {prompts[0]}  ", prompts[1]}  # compared stripped
    second = load_prompts(source, 0, exclude=leaked)
    assert prompts[0] not in [e["prompt"] for e in second.examples]
    assert second.counts["quarantined/eval_prompt"] >= 2
    refused = [q for q in second.quarantine if q["reason"] == "eval_prompt"]
    assert {q["line"] for q in refused} and all(q["source"] for q in refused)


def _jsonl(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_jsonl_prompts_keep_ids_and_optional_answers(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"id": "q1", "prompt": "Name a prime.", "answer": 7},
            {"prompt": "Write a haiku."},  # no answer: fine
            "{broken",
            {"prompt": "   "},
            {"prompt": "Name a prime."},  # a duplicate of line 1
            {"id": "q1", "prompt": "Another?"},  # a duplicate id
            {"prompt": "True?", "answer": True},
            {"id": [1], "prompt": "Listed id"},
            {"answer": "3"},
        ],
    )
    loaded = load_prompts(PromptSource(kind="jsonl", path=path, num_prompts=10), cycle=3)
    assert loaded.examples == [
        {"prompt_id": "q1", "prompt": "Name a prime.", "answer": "7"},
        {"prompt_id": prompt_id("Write a haiku."), "prompt": "Write a haiku.", "answer": None},
    ]
    reasons = {q["line"]: q["reason"] for q in loaded.quarantine}
    assert reasons == {
        3: "invalid_json",
        4: "empty_prompt",
        5: "duplicate_prompt",
        6: "duplicate_id",
        7: "answer_not_a_string_or_number",
        8: "id_not_a_string_or_integer",
        9: "missing_prompt",
    }


def test_jsonl_sample_is_seeded_by_cycle(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": f"Count to {i}."} for i in range(50)])
    source = PromptSource(kind="jsonl", path=path, num_prompts=10)
    one, again, two = (load_prompts(source, c) for c in (1, 1, 2))
    assert len(one.examples) == 10 and one.examples == again.examples
    assert one.examples != two.examples
    order = [int(e["prompt"].split()[-1][:-1]) for e in one.examples]
    assert order == sorted(order)  # file order kept


def test_no_usable_prompt_is_an_error(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "Only one."}])
    source = PromptSource(kind="jsonl", path=path)
    with pytest.raises(ValueError, match=r"no usable prompt.*eval_prompt=1"):
        load_prompts(source, 0, exclude={"Only one."})
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_prompts(PromptSource(kind="jsonl", path=tmp_path / "missing.jsonl"), 0)


def test_eval_prompts_cover_every_task(tmp_path: Path) -> None:
    _jsonl(tmp_path / "qa.jsonl", [{"prompt": " Capital of France? ", "answer": "Paris"}])
    spec_path = tmp_path / "flywheel.yaml"
    spec_path.write_text(
        textwrap.dedent(
            """
            eval:
              tasks:
                - {name: arithmetic, kind: arithmetic, num_examples: 5, seed: 3}
                - {name: qa, kind: jsonl, path: qa.jsonl, verifier: exact}
            """
        )
    )
    prompts = eval_prompts(load_spec(spec_path))
    assert "Capital of France?" in prompts
    assert len(prompts) >= 5 and all(p == p.strip() for p in prompts)


def test_a_curriculum_sets_each_cycles_digits() -> None:
    source = PromptSource(num_prompts=50, width=5, curriculum=[[4, 4], [4, 5], [5, 5]])
    digits = {}
    for cycle in range(5):
        prompts = load_prompts(source, cycle).examples
        digits[cycle] = {len(str(int(p["prompt"].split("+")[0][::-1]))) for p in prompts}
    assert digits[0] == {4} and digits[1] == {4, 5} and digits[2] == digits[4] == {5}
    with pytest.raises(ValueError, match="curriculum entry"):
        PromptSource(width=5, curriculum=[[3, 6]])

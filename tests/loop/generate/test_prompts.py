"""Cycle prompts: drawn per cycle, ids stable, eval prompts and duplicates quarantined."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest

from flywheel.core.chat import conversation_id
from flywheel.core.settings.loop import PromptSource
from flywheel.core.spec import load_spec
from flywheel.loop.prompts import eval_prompts, load_prompts


def test_builtin_prompts_are_seeded_by_cycle() -> None:
    source = PromptSource(kind="addition", num_prompts=20, min_digits=2, max_digits=3, width=4)
    one, again, two = (load_prompts(source, c) for c in (1, 1, 2))
    assert one.examples == again.examples
    assert one.examples != two.examples  # a new cycle sees new problems
    ex = one.examples[0]
    assert set(ex) == {"prompt_id", "prompt", "messages", "answer"}
    assert ex["messages"] == [{"role": "user", "content": ex["prompt"]}]
    assert ex["prompt_id"] == hashlib.sha1(ex["prompt"].encode()).hexdigest()[:16]
    a, b = (int(x[::-1]) for x in ex["prompt"].split("+"))
    assert int(ex["answer"][::-1]) == a + b  # the addition generator's reversed answers


def test_builtin_prompts_are_distinct_and_never_eval_problems() -> None:
    """A generator draws again instead of repeating a problem or asking an eval one: the
    cycle gets num_prompts distinct problems, or every one a small space has."""
    wide = PromptSource(kind="arithmetic", num_prompts=300, max_operand=30, seed=1)
    drawn = [e["prompt"] for e in load_prompts(wide, 0).examples]
    assert len(drawn) == len(set(drawn)) == 300
    leaked = {f"  {drawn[0]}  ", drawn[1]}  # compared stripped
    again = [e["prompt"] for e in load_prompts(wide, 0, exclude=leaked).examples]
    assert len(again) == 300 and not {drawn[0], drawn[1]} & set(again)
    assert again[:10] == drawn[2:12]  # the same draw, less the two eval problems
    # 0..3 with 0..3: 16 sums and 10 differences (larger operand first), fewer than asked.
    small = PromptSource(kind="arithmetic", num_prompts=60, max_operand=3, seed=1)
    every = load_prompts(small, 0)
    assert len({e["prompt"] for e in every.examples}) == len(every.examples) == 26
    assert every.quarantine == []


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
    haiku = [{"role": "user", "content": "Write a haiku."}]
    assert loaded.examples == [
        {
            "prompt_id": "q1",
            "prompt": "Name a prime.",
            "messages": [{"role": "user", "content": "Name a prime."}],
            "answer": "7",
        },
        {
            "prompt_id": conversation_id(haiku),
            "prompt": "Write a haiku.",
            "messages": haiku,
            "answer": None,
        },
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
    source = PromptSource(
        kind="addition", num_prompts=50, width=5, curriculum=[[4, 4], [4, 5], [5, 5]]
    )
    digits = {}
    for cycle in range(5):
        prompts = load_prompts(source, cycle).examples
        digits[cycle] = {len(str(int(p["prompt"].split("+")[0][::-1]))) for p in prompts}
    assert digits[0] == {4} and digits[1] == {4, 5} and digits[2] == digits[4] == {5}
    with pytest.raises(ValueError, match="curriculum entry"):
        PromptSource(width=5, curriculum=[[3, 6]])


SYSTEM = {"role": "system", "content": "Answer with digits only."}


def test_jsonl_prompts_in_messages_form_keep_the_conversation_and_answer(tmp_path: Path) -> None:
    earlier = [
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "And 2 + 2?"},
    ]
    path = _jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"messages": [SYSTEM, *earlier], "answer": 4},  # 1: the answer field
            {"messages": [*earlier[:2], {"role": "user", "content": "3 + 3?"},
                          {"role": "assistant", "content": "6"}]},  # 2: a trailing answer
            {"messages": [{"role": "user", "content": "Hi"}]},  # 3: no answer: fine
            {"messages": [SYSTEM, *earlier]},  # 4: the same conversation as line 1
            {"messages": [{"role": "user", "content": "Hi"}], "prompt": "Hi"},  # 5: duplicate
            {"messages": [{"role": "assistant", "content": "4"}]},  # 6
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                          {"role": "assistant", "content": "b"}]},  # 7
            {"messages": [{"role": "user", "content": "q"}, SYSTEM]},  # 8
            {"messages": [{"role": "user", "content": " "}]},  # 9
            {"messages": "What is 2 + 2?"},  # 10
            {"messages": [{"role": "robot", "content": "x"}]},  # 11
        ],
    )  # fmt: skip
    loaded = load_prompts(PromptSource(kind="jsonl", path=path, num_prompts=10), cycle=0)
    first, second, third = loaded.examples
    assert first["messages"] == [SYSTEM, *earlier]
    assert (first["prompt"], first["answer"]) == ("And 2 + 2?", "4")
    assert first["prompt_id"] == conversation_id([SYSTEM, *earlier])
    assert first["prompt_id"] != conversation_id(earlier)  # the system turn is in the id
    assert second["messages"][-1] == {"role": "user", "content": "3 + 3?"}
    assert (second["prompt"], second["answer"]) == ("3 + 3?", "6")  # the trailing turn
    assert third["answer"] is None
    reasons = {q["line"]: q["reason"] for q in loaded.quarantine}
    assert reasons == {
        4: "duplicate_prompt",
        5: "duplicate_prompt",
        6: "no_user_turn",
        7: "turns_after_the_answer",
        8: "system_turn_after_last_user",
        9: "empty_message",
        10: "messages_not_a_list",
        11: "unknown_role",
    }
    # An eval question leaks whatever conversation it sits in: compared by its last user turn.
    leaked = load_prompts(
        PromptSource(kind="jsonl", path=path, num_prompts=10), 0, exclude={"And 2 + 2?"}
    )
    assert {q["line"]: q["reason"] for q in leaked.quarantine}[1] == "eval_prompt"


def test_generation_system_prompt_is_a_first_turn_where_there_is_none(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"prompt": "What is 2 + 3?", "answer": "5"},
            {"messages": [{"role": "system", "content": "Be terse."},
                          {"role": "user", "content": "What is 1 + 3?"}], "answer": "4"},
        ],
    )  # fmt: skip
    source = PromptSource(kind="jsonl", path=path)
    plain = load_prompts(source, 0).examples
    framed = load_prompts(source, 0, system_prompt="Answer with digits only.").examples
    assert framed[0]["messages"] == [SYSTEM, {"role": "user", "content": "What is 2 + 3?"}]
    assert framed[0]["prompt"] == "What is 2 + 3?"
    assert framed[0]["prompt_id"] != plain[0]["prompt_id"]
    assert framed[1] == plain[1]  # its own system turn wins
    builtin = load_prompts(PromptSource(num_prompts=3), 1, system_prompt="Add.").examples
    assert all(e["messages"][0] == {"role": "system", "content": "Add."} for e in builtin)

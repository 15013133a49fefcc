"""Built-in arithmetic and task files: deterministic problems, quarantined bad records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flywheel.core.settings.train import EvalTask
from flywheel.data.arithmetic import arithmetic_examples
from flywheel.loop.tasks import load_task_examples
from flywheel.loop.verifiers import verify


def test_arithmetic_is_deterministic_and_correct() -> None:
    problems = arithmetic_examples(200, 20, seed=3)
    assert problems == arithmetic_examples(200, 20, seed=3)
    assert problems != arithmetic_examples(200, 20, seed=4)
    ops = set()
    for p in problems:
        a, op, b = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", p["prompt"]).groups()
        a, b = int(a), int(b)
        assert 0 <= a <= 20 and 0 <= b <= 20
        assert int(p["answer"]) == (a + b if op == "+" else a - b) >= 0
        assert verify("numeric", p["answer"], p["answer"])
        ops.add(op)
    assert ops == {"+", "-"}


def test_builtin_task() -> None:
    loaded = load_task_examples(EvalTask(num_examples=7, max_operand=5, seed=1))
    assert loaded.examples == [
        {"messages": [{"role": "user", "content": p["prompt"]}], **p}
        for p in arithmetic_examples(7, 5, 1)
    ]
    assert loaded.quarantine == [] and loaded.counts["examples"] == 7


def _write_lines(path: Path, lines: list[str | bytes]) -> Path:
    with open(path, "wb") as f:
        for line in lines:
            f.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    return path


def test_jsonl_task_quarantines_bad_records_with_line_and_reason(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "task.jsonl",
        [
            json.dumps({"prompt": "What is 2 + 2?", "answer": "4"}),  # 1 ok
            "{not json",  # 2
            json.dumps(["a", "list"]),  # 3
            json.dumps({"prompt": "no answer"}),  # 4
            json.dumps({"prompt": "  ", "answer": "1"}),  # 5
            json.dumps({"prompt": "What is 3 + 4?", "answer": 7}),  # 6 ok: a JSON number
            "",  # blank lines are not records
            json.dumps({"prompt": "Capital of France?", "answer": "Paris"}),  # 8: not numeric
            json.dumps({"prompt": "bool", "answer": True}),  # 9
            b"\xff\xfe not utf-8",  # 10
        ],
    )
    loaded = load_task_examples(EvalTask(name="t", kind="jsonl", path=path, num_examples=50))
    assert [(e["prompt"], e["answer"]) for e in loaded.examples] == [
        ("What is 2 + 2?", "4"),
        ("What is 3 + 4?", "7"),
    ]
    assert loaded.examples[0]["messages"] == [{"role": "user", "content": "What is 2 + 2?"}]
    reasons = {q["line"]: q["reason"] for q in loaded.quarantine}
    assert reasons == {
        2: "invalid_json",
        3: "not_an_object",
        4: "missing_answer",
        5: "empty_prompt",
        8: "answer_not_a_number",
        9: "answer_not_a_string_or_number",
        10: "invalid_utf8",
    }
    assert all(q["source"] == str(path) for q in loaded.quarantine)
    assert loaded.counts["quarantined"] == 7
    assert loaded.counts["quarantined/invalid_json"] == 1
    # With an exact verifier a text answer is fine.
    exact = EvalTask(name="t", kind="jsonl", path=path, verifier="exact")
    texts = [(e["prompt"], e["answer"]) for e in load_task_examples(exact).examples]
    assert ("Capital of France?", "Paris") in texts


def test_jsonl_task_keeps_the_first_num_examples(tmp_path: Path) -> None:
    rows = [json.dumps({"prompt": f"p{i}", "answer": str(i)}) for i in range(10)]
    path = _write_lines(tmp_path / "task.jsonl", rows)
    loaded = load_task_examples(EvalTask(kind="jsonl", path=path, num_examples=3))
    assert [e["answer"] for e in loaded.examples] == ["0", "1", "2"]


def test_jsonl_task_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(FileNotFoundError, match="eval task 'x'.*missing.jsonl"):
        load_task_examples(EvalTask(name="x", kind="jsonl", path=missing))
    bad = _write_lines(tmp_path / "bad.jsonl", ["{oops", json.dumps({"prompt": "p"})])
    with pytest.raises(ValueError, match=r"bad.jsonl has no usable records.*line 1: invalid_json"):
        load_task_examples(EvalTask(name="x", kind="jsonl", path=bad))


def test_addition_examples_are_padded_reversed_sums() -> None:
    from flywheel.data.arithmetic import addition_examples

    problems = addition_examples(200, 2, 4, 5, seed=3)
    assert problems == addition_examples(200, 2, 4, 5, seed=3)
    for p in problems:
        a, b = (int(x[::-1]) for x in p["prompt"].split("+"))
        assert len(p["prompt"]) == 11 and len(p["answer"]) == 6
        assert int(p["answer"][::-1]) == a + b
        assert all(2 <= len(str(n)) <= 4 for n in (a, b))
    lengths = {len(str(int(p["prompt"].split("+")[0][::-1]))) for p in problems}
    assert lengths == {2, 3, 4}
    with pytest.raises(ValueError, match="max_digits <= width"):
        addition_examples(1, 1, 6, 5, seed=0)


def test_jsonl_task_reads_the_whole_file_unless_num_examples_is_set(tmp_path: Path) -> None:
    # Regression: num_examples used to default to 100 and silently cut a longer file.
    rows = [json.dumps({"prompt": f"p{i}", "answer": str(i)}) for i in range(200)]
    path = _write_lines(tmp_path / "task.jsonl", rows)
    task = EvalTask(kind="jsonl", path=path)
    assert task.num_examples is None
    assert load_task_examples(task).counts["examples"] == 200


def test_builtin_tasks_generate_a_documented_default_count() -> None:
    from flywheel.core.settings.train import BUILTIN_EVAL_EXAMPLES

    for kind in ("arithmetic", "addition"):
        task = EvalTask(kind=kind)
        assert len(load_task_examples(task).examples) == BUILTIN_EVAL_EXAMPLES


SYSTEM = {"role": "system", "content": "Reply with the number only."}


def test_jsonl_task_in_messages_form(tmp_path: Path) -> None:
    """A conversation is continued after its last user turn; its trailing assistant turn is
    the answer where ``answer`` is absent; the task's system prompt fills in where none is."""
    two_turns = [
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "And 2 + 3?"},
    ]
    path = _write_lines(
        tmp_path / "task.jsonl",
        [
            json.dumps({"messages": [SYSTEM, *two_turns], "answer": 5}),  # 1
            json.dumps(
                {"messages": [*two_turns, {"role": "assistant", "content": "5"}]}
            ),  # 2: trailing answer
            json.dumps({"messages": two_turns}),  # 3: no answer at all
            json.dumps({"messages": [SYSTEM, *two_turns], "answer": "five"}),  # 4: not numeric
            json.dumps({"messages": [{"role": "user", "content": "q"}, SYSTEM]}),  # 5
        ],
    )
    task = EvalTask(name="t", kind="jsonl", path=path, system_prompt="Be brief.")
    loaded = load_task_examples(task)
    first, second = loaded.examples
    assert first == {"messages": [SYSTEM, *two_turns], "prompt": "And 2 + 3?", "answer": "5"}
    brief = {"role": "system", "content": "Be brief."}
    assert second == {"messages": [brief, *two_turns], "prompt": "And 2 + 3?", "answer": "5"}
    reasons = {q["line"]: q["reason"] for q in loaded.quarantine}
    assert reasons == {
        3: "missing_answer",
        4: "answer_not_a_number",
        5: "system_turn_after_last_user",
    }
    builtin = load_task_examples(EvalTask(num_examples=2, system_prompt="Be brief."))
    assert all(e["messages"][0] == brief for e in builtin.examples)

"""SFT data: every supported record shape becomes a conversation; bad records are kept aside."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from flywheel.core.settings.train import SftData
from flywheel.data.arithmetic import arithmetic_examples
from flywheel.train.sft_data import data_fingerprint, load_sft_data


def _conv(prompt: str, response: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": response},
        ]
    }


def test_arithmetic_data() -> None:
    loaded = load_sft_data(SftData(kind="arithmetic", num_examples=5, max_operand=9, seed=2))
    expected = [_conv(p["prompt"], p["answer"]) for p in arithmetic_examples(5, 9, 2)]
    assert loaded.examples == expected
    assert loaded.quarantine == []
    assert "arithmetic" in loaded.source


GOOD = [
    {"prompt": "Say hi", "response": "hi"},
    {"prompt": "Add 1 and 2", "completion": "3"},
    {"instruction": "Translate to French", "input": "cat", "output": "chat"},
    {"instruction": "Name a colour", "input": "", "output": "red"},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    },
]
EXPECTED = [
    _conv("Say hi", "hi"),
    _conv("Add 1 and 2", "3"),
    _conv("Translate to French\n\ncat", "chat"),
    _conv("Name a colour", "red"),
    GOOD[4],
]
BAD = [
    ({"prompt": "no response"}, "missing_response"),
    ({"response": "no prompt"}, "missing_prompt"),
    ({"prompt": "", "response": "x"}, "empty_prompt"),
    ({"prompt": "x", "response": "   "}, "empty_response"),
    ({"prompt": 3, "response": "x"}, "field_not_a_string"),
    ({"text": "something else"}, "missing_fields"),
    ({"messages": "hello"}, "messages_not_a_list"),
    ({"messages": []}, "empty_messages"),
    ({"messages": [{"role": "user", "content": "q"}]}, "does_not_end_with_assistant"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, "no_user_turn"),
    ({"messages": [{"role": "robot", "content": "a"}]}, "unknown_role"),
    ({"messages": [{"role": "user", "content": ["x"]}]}, "message_without_text_content"),
]


def test_jsonl_shapes_and_quarantine(tmp_path: Path) -> None:
    path = tmp_path / "sft.jsonl"
    lines = [json.dumps(r) for r in GOOD] + ["{broken", "42"] + [json.dumps(r) for r, _ in BAD]
    path.write_text("\n".join(lines) + "\n\n")
    loaded = load_sft_data(SftData(kind="jsonl", path=path))
    assert loaded.examples == EXPECTED
    first_bad = len(GOOD) + 1
    expected = {first_bad: "invalid_json", first_bad + 1: "not_an_object"}
    expected |= {first_bad + 2 + i: reason for i, (_, reason) in enumerate(BAD)}
    assert {q["line"]: q["reason"] for q in loaded.quarantine} == expected
    assert loaded.counts["examples"] == len(GOOD)
    assert loaded.counts["quarantined"] == len(BAD) + 2
    assert loaded.source == f"jsonl:{path}"


def test_parquet_rows(tmp_path: Path) -> None:
    path = tmp_path / "sft.parquet"
    pl.DataFrame(
        {
            "prompt": ["Say hi", "no response", "", "Add"],
            "response": ["hi", None, "x", "3"],
        }
    ).write_parquet(path)
    loaded = load_sft_data(SftData(kind="parquet", path=path))
    assert loaded.examples == [_conv("Say hi", "hi"), _conv("Add", "3")]
    assert [(q["line"], q["reason"]) for q in loaded.quarantine] == [
        (2, "missing_response"),
        (3, "empty_prompt"),
    ]


def test_no_usable_examples_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "only"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl has no usable examples.*line 1: missing"):
        load_sft_data(SftData(kind="jsonl", path=path))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_sft_data(SftData(kind="jsonl", path=tmp_path / "nope.jsonl"))
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        load_sft_data(SftData(kind="parquet", path=junk))


def test_fingerprint_follows_content(tmp_path: Path) -> None:
    a = load_sft_data(SftData(num_examples=10))
    assert data_fingerprint(a) == data_fingerprint(load_sft_data(SftData(num_examples=10)))
    assert data_fingerprint(a) != data_fingerprint(load_sft_data(SftData(num_examples=11)))


def test_extra_sets_are_appended() -> None:
    from flywheel.core.settings.train import SftData
    from flywheel.train.sft_data import load_sft_data

    data = SftData(
        kind="addition",
        num_examples=30,
        max_digits=3,
        extra=[SftData(kind="addition", num_examples=5, min_digits=4, max_digits=4, seed=9)],
    )
    loaded = load_sft_data(data)
    assert len(loaded.examples) == 35 and "digits=4-4" in loaded.source
    hard = [e["messages"][0]["content"] for e in loaded.examples[30:]]
    assert all(p.split("+")[0][3] != "0" for p in hard)  # reversed: the 4th digit is set


def made_records(num_examples: int, seed: int, reply: str = "ok") -> list:
    """A ``kind: python`` SFT data function (this module is importable in tests)."""
    good = [_conv(f"say {seed}-{i}", reply) for i in range(num_examples)]
    return [*good, {"messages": [{"role": "user", "content": "no answer"}]}, "not a record"]


def test_python_kind_calls_the_function_and_quarantines_bad_records() -> None:
    data = SftData(
        kind="python",
        function="tests.train.test_sft_data:made_records",
        num_examples=3,
        seed=4,
        settings={"reply": "yes"},
    )
    loaded = load_sft_data(data)
    assert [e["messages"][0]["content"] for e in loaded.examples] == [
        "say 4-0",
        "say 4-1",
        "say 4-2",
    ]
    assert all(e["messages"][-1]["content"] == "yes" for e in loaded.examples)
    assert [q["reason"] for q in loaded.quarantine] == [
        "does_not_end_with_assistant",
        "missing_fields",
    ]
    assert "made_records" in loaded.source and "'reply': 'yes'" in loaded.source


def test_python_kind_errors_name_the_function() -> None:
    with pytest.raises(ValueError, match="package.module:function"):
        SftData(kind="python")
    missing = SftData(kind="python", function="tests.train.test_sft_data:nowhere")
    with pytest.raises(ValueError, match="'tests.train.test_sft_data:nowhere' cannot be imported"):
        load_sft_data(missing)

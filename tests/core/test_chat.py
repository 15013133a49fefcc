"""The one record schema: every form normalizes to messages, bad records give reasons, and a
conversation renders for generation exactly as SFT renders it for training."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from flywheel.core import chat

SYSTEM = chat.turn("system", "Answer with digits only.")
CONVERSATION = [
    SYSTEM,
    chat.turn("user", "What is 1 + 1?"),
    chat.turn("assistant", "2"),
    chat.turn("user", "And 2 + 3?"),
]


def test_short_forms_normalize_to_messages() -> None:
    assert chat.sft_record({"prompt": "Say hi", "response": "hi"}) == (
        {"messages": [chat.turn("user", "Say hi"), chat.turn("assistant", "hi")]},
        "",
    )
    example, _ = chat.prompt_record({"prompt": "What is 2 + 2?", "answer": 4, "id": 9})
    assert example == {
        "messages": [chat.turn("user", "What is 2 + 2?")],
        "prompt": "What is 2 + 2?",
        "answer": "4",
        "id": "9",
    }
    # messages is the record: a prompt beside it (as UltraChat keeps one) is not read.
    both = {"messages": CONVERSATION, "prompt": "ignored", "answer": "5"}
    assert chat.prompt_record(both)[0]["prompt"] == "And 2 + 3?"


def test_sft_keeps_every_turn_and_must_end_on_the_assistant() -> None:
    answered = [*CONVERSATION, chat.turn("assistant", "5")]
    assert chat.sft_record({"messages": answered}) == ({"messages": answered}, "")
    assert chat.sft_record({"messages": CONVERSATION}) == (None, "does_not_end_with_assistant")


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"messages": "hi"}, "messages_not_a_list"),
        ({"messages": []}, "empty_messages"),
        ({"messages": [{"role": "user"}]}, "message_without_text_content"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "unknown_role"),
        ({"messages": [{"role": "user", "content": "\n"}]}, "empty_message"),
        ({"messages": [SYSTEM]}, "no_user_turn"),
        ({"messages": [*CONVERSATION, SYSTEM]}, "system_turn_after_last_user"),
        ({"messages": [*CONVERSATION, *CONVERSATION[2:3] * 2]}, "turns_after_the_answer"),
        ({"prompt": 3}, "prompt_not_a_string"),
        ({"answer": "3"}, "missing_prompt"),
        ({"prompt": "q", "answer": [3]}, "answer_not_a_string_or_number"),
        ({"prompt": "q", "answer": " "}, "empty_answer"),
        ({"prompt": "q", "id": 1.5}, "id_not_a_string_or_integer"),
    ],
)
def test_bad_prompt_records_give_their_reason(record: dict, reason: str) -> None:
    assert chat.prompt_record(record) == (None, reason)


def test_the_answer_field_wins_over_a_trailing_assistant_turn() -> None:
    trailing = [*CONVERSATION, chat.turn("assistant", "5")]
    assert chat.prompt_record({"messages": trailing})[0]["answer"] == "5"
    assert chat.prompt_record({"messages": trailing, "answer": "6"})[0]["answer"] == "6"
    example, _ = chat.prompt_record({"messages": trailing})
    assert example["messages"] == CONVERSATION  # continued after the last user turn


def test_system_prompt_is_added_only_where_there_is_none() -> None:
    user = [chat.turn("user", "q")]
    assert chat.with_system(user, "Be brief.") == [chat.turn("system", "Be brief."), *user]
    assert chat.with_system(CONVERSATION, "Be brief.") == CONVERSATION
    assert chat.with_system(user, None) == user


def test_conversation_ids_hash_every_turn() -> None:
    lone = [chat.turn("user", "What is 2 + 2?")]
    # A lone user turn keeps the id prompts always had: the sha1 of its text.
    assert chat.conversation_id(lone) == hashlib.sha1(b"What is 2 + 2?").hexdigest()[:16]
    framed = chat.conversation_id([SYSTEM, *lone])
    assert framed != chat.conversation_id(lone)
    assert framed == chat.conversation_id([dict(SYSTEM), *lone])  # stable


def test_answered_rows_round_trip() -> None:
    row = chat.answered(chat.dumps(CONVERSATION), "And 2 + 3?", "5")
    assert chat.loads(row) == [*CONVERSATION, chat.turn("assistant", "5")]
    assert chat.loads(chat.answered(None, "q", "a")) == [
        chat.turn("user", "q"),
        chat.turn("assistant", "a"),
    ]


def test_rendering_is_the_prefix_sft_trains_on(tmp_path: Path) -> None:
    """The generation prompt of a conversation is exactly the start of the text (and tokens)
    SFT's chat template makes of the conversation with its answer: system turn and earlier
    turns included."""
    from flywheel.train.tokenizer import train_tokenizer

    texts = ["What is 1 + 1? 2. And 2 + 3? 5. Answer with digits only."] * 20
    tok = train_tokenizer(texts, vocab_size=300, min_frequency=2, out_dir=tmp_path)
    (rendered,) = chat.render_prompts(tok, [CONVERSATION])
    assert rendered.startswith("<|im_start|>system\nAnswer with digits only.<|im_end|>\n")
    assert "<|im_start|>assistant\n2<|im_end|>\n" in rendered
    assert rendered.endswith("<|im_start|>user\nAnd 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    full = [*CONVERSATION, chat.turn("assistant", "5")]
    trained = tok.apply_chat_template(full, tokenize=False)
    assert trained == rendered + "5<|im_end|>\n"
    ids = tok(rendered, add_special_tokens=False)["input_ids"]
    assert tok(trained, add_special_tokens=False)["input_ids"][: len(ids)] == ids
    # A plain string is one user turn.
    lone = chat.render_prompts(tok, ["Hi"])[0]
    assert lone == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        chat.render_prompts(tok, ["Hi"])

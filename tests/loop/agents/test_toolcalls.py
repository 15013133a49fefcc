"""The <tool_call> convention: what parses, what becomes an error, and TRL's own parser agrees."""

from __future__ import annotations

from typing import Any

from flywheel.loop.agents.toolcalls import ToolCall, format_tool_call, parse_tool_calls


def test_calls_parse_in_order_with_text_around() -> None:
    text = "thinking\n" + format_tool_call("a", {"x": 1}) + "\n" + format_tool_call("b", {})
    assert parse_tool_calls(text, {"a", "b"}) == [ToolCall("a", {"x": 1}), ToolCall("b", {})]
    assert parse_tool_calls("no calls") == []
    # arguments written as a JSON string are accepted, missing arguments are {}
    assert parse_tool_calls('<tool_call>{"name":"a","arguments":"{\\"x\\": 2}"}</tool_call>') == [
        ToolCall("a", {"x": 2})
    ]
    assert parse_tool_calls('<tool_call>{"name":"a"}</tool_call>') == [ToolCall("a", {})]


def test_malformed_calls_carry_an_error() -> None:
    cases = {
        "<tool_call>nope</tool_call>": "not valid JSON",
        '<tool_call>{"arguments": {}}</tool_call>': "no string 'name'",
        '<tool_call>{"name": "a", "arguments": [1]}</tool_call>': "must be a JSON object",
        '<tool_call>{"name": "zz"}</tool_call>': "no tool named 'zz'",
        '<tool_call>{"name": "a"': "never closed",
    }
    for text, why in cases.items():
        (call,) = parse_tool_calls(text, {"a"})
        assert why in call.error, (text, call)


def test_trl_parses_our_format_with_its_qwen_template(tokenizer: Any) -> None:
    """TRL's ``parse_response`` with its Qwen3 response template (the convention we follow),
    on our own tokenizer's ids, reads the call we parse."""
    import copy

    from trl.chat_template_utils import parse_response, qwen3_template

    tok = copy.deepcopy(tokenizer)
    tok.response_template = qwen3_template
    text = "ok\n" + format_tool_call("guess", {"number": 17}) + "<|im_end|>"
    prefix = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    parsed = parse_response(tok, ids, prefix=tok(prefix, add_special_tokens=False)["input_ids"])
    assert parsed["content"] == "ok"
    assert parsed["tool_calls"] == [ToolCall("guess", {"number": 17}).as_message()]
    assert parse_tool_calls(text) == [ToolCall("guess", {"number": 17})]

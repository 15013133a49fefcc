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


def test_our_template_offers_tools_in_the_collectors_words(tokenizer: Any) -> None:
    """TRL renders ``tools=`` through the chat template; the collector writes a system turn
    itself: the model must see the same text either way."""
    from flywheel.envs.guess import NumberGuess
    from flywheel.envs.protocol import tool_methods
    from flywheel.loop.agents.toolcalls import system_prompt, tool_schemas

    methods = tool_methods(NumberGuess())
    offered = {"role": "system", "content": system_prompt(tool_schemas(methods))}
    user = [{"role": "user", "content": "Find the secret number."}]
    render = tokenizer.apply_chat_template
    assert render(user, tools=methods, tokenize=False) == render([offered, *user], tokenize=False)
    # a conversation's own system turn comes first, in the same turn
    own = {"role": "system", "content": "Be quick."}
    merged = {"role": "system", "content": "Be quick.\n\n" + offered["content"]}
    assert render([own, *user], tools=methods, tokenize=False) == render(
        [merged, *user], tokenize=False
    )


def test_our_template_writes_tool_calls_as_the_model_does(tokenizer: Any) -> None:
    """An assistant turn's ``tool_calls`` become the blocks the model writes (inside the
    assistant mask), once; TRL accepts the template for its tool loop and parses the turn
    back with ``RESPONSE_TEMPLATE``."""
    import copy

    from trl.chat_template_utils import (
        is_chat_template_prefix_preserving,
        parse_response,
        supports_tool_calling,
    )

    from flywheel.train.tokenizer import RESPONSE_TEMPLATE

    calls = [ToolCall("guess", {"number": 17}), ToolCall("guess", {"number": 3})]
    written = "ok\n" + "\n".join(format_tool_call(c.name, c.arguments) for c in calls)
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "ok", "tool_calls": [c.as_message() for c in calls]},
        {"role": "tool", "name": "guess", "content": "lower"},
    ]
    out = tokenizer.apply_chat_template(
        turns, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    learned = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(learned) == written + "<|im_end|>"
    # the collector keeps the model's raw text as content: the calls are not written twice
    raw = [turns[0], {**turns[1], "content": written}, turns[2]]
    assert tokenizer.apply_chat_template(raw, tokenize=False) == tokenizer.decode(out["input_ids"])
    assert supports_tool_calling(tokenizer) and is_chat_template_prefix_preserving(tokenizer)

    tok = copy.deepcopy(tokenizer)
    tok.response_template = RESPONSE_TEMPLATE
    prefix = tok.apply_chat_template(turns[:1], add_generation_prompt=True)["input_ids"]
    ids = tok(written + "<|im_end|>", add_special_tokens=False)["input_ids"]
    parsed = parse_response(tok, ids, prefix=prefix)
    assert parsed["content"] == "ok"
    assert parsed["tool_calls"] == [c.as_message() for c in calls]

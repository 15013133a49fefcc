"""How the model calls a tool, how the call is parsed, and how tools are offered to it.

    python -m pytest -q tests/loop/agents/test_toolcalls.py

We use the convention TRL's Qwen response schema parses (``trl.chat_template_utils.qwen3_schema``,
Hermes-style): the assistant writes, anywhere in its turn, one or more

    <tool_call>
    {"name": "guess", "arguments": {"number": 17}}
    </tool_call>

and each call's result comes back as a ``{"role": "tool", "name": ..., "content": ...}`` turn,
which the template renders like any other role (``<|im_start|>tool\\n...<|im_end|>``). The
tools and this convention are described in a system turn (``system_prompt``), their JSON
schemas made by transformers' ``get_json_schema`` exactly as TRL makes them. Our ChatML
template (``flywheel.train.tokenizer.CHAT_TEMPLATE``) renders ``tools=`` as the same system
turn, word for word, and an assistant turn's ``tool_calls`` as these blocks, so TRL's
environment loop and this collector show the model the same text (``tokenizer.RESPONSE_TEMPLATE``
is how TRL parses it back).

A block that is not a JSON object with a string ``name`` and an object ``arguments`` (a
missing ``arguments`` is ``{}``), or that names no tool of the environment, is a ``ToolCall``
with ``error`` set: the collector answers it with an ``error: ...`` observation instead of
calling anything, so a malformed call costs the model a turn, never the collector a crash.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# TRL's qwen3_schema iterator: the shortest text between the tags, whitespace trimmed.
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_OPEN = "<tool_call>"


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: ``name`` and ``arguments``, or ``error`` saying why it cannot run."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def as_message(self) -> dict[str, Any]:
        """The OpenAI/TRL ``tool_calls`` entry of the assistant turn."""
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def parse_tool_calls(text: str, tools: set[str] | None = None) -> list[ToolCall]:
    """Every ``<tool_call>`` block of ``text`` in order; ``tools`` (names) marks unknown ones.

    An opening tag never closed (the turn ran out of tokens mid-call) is one malformed call,
    so the model hears why nothing happened.
    """
    calls = [_one(body, tools) for body in _CALL.findall(text)]
    if text.count(_OPEN) > len(calls):
        calls.append(ToolCall("", error="a <tool_call> block was opened but never closed"))
    return calls


def _one(body: str, tools: set[str] | None) -> ToolCall:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        return ToolCall("", error=f"the tool call is not valid JSON ({exc.msg} at {exc.pos})")
    if not isinstance(obj, dict):
        return ToolCall("", error="the tool call must be a JSON object with name and arguments")
    name, arguments = obj.get("name"), obj.get("arguments", {})
    if not isinstance(name, str) or not name:
        return ToolCall("", error="the tool call has no string 'name'")
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        with contextlib.suppress(json.JSONDecodeError):  # else: not an object, said below
            arguments = json.loads(arguments)
    if not isinstance(arguments, dict):
        return ToolCall(name, error="'arguments' must be a JSON object")
    if tools is not None and name not in tools:
        known = ", ".join(sorted(tools))
        return ToolCall(name, arguments, error=f"no tool named {name!r} (tools: {known})")
    return ToolCall(name, arguments)


def format_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """The text of one call in our convention (what a scripted policy or SFT data writes)."""
    return f"{_OPEN}\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def tool_schemas(methods: list[Callable[..., Any]]) -> list[dict[str, Any]]:
    """The JSON schema of each tool, as TRL builds them (type hints + Google docstring)."""
    from transformers.utils import get_json_schema

    return [get_json_schema(m) for m in methods]


def system_prompt(schemas: list[dict[str, Any]]) -> str:
    """A system turn that lists the tools and says how to call them."""
    from flywheel.train.tokenizer import TOOLS_INTRO, TOOLS_OUTRO

    # json.dumps as the template's tojson writes it, so both render the same text
    listed = "".join(
        json.dumps(s, separators=(",", ":"), ensure_ascii=False) + "\n" for s in schemas
    )
    return TOOLS_INTRO + listed + TOOLS_OUTRO

"""One notion of a record: a chat conversation, with an optional reference answer.

    python -c "from flywheel.core.chat import prompt_record; \
print(prompt_record({'prompt': 'What is 2 + 2?', 'answer': 4}))"

Evaluation and every generation backend render a conversation with ``render_prompts``.

Every reader of examples (SFT data, eval tasks, prompt files) parses its records here, and
generations and training sets carry the same conversations, so that what a cycle trains on,
evaluates and generates from is the format the seed SFT trained on. A record is

    {"messages": [{"role": "system" | "user" | "assistant" | "tool", "content": str}, ...],
     "answer"?: str | number, "id"?: str | int}

or a short form that normalizes to ``messages``:

- ``{"prompt", "answer"?, "id"?}`` (eval tasks, prompts): one user turn;
- ``{"prompt", "response"}`` (SFT; also ``prompt``/``completion`` and Alpaca's
  ``instruction``/``output`` with an optional ``input``): a user and an assistant turn.

``messages``, when present, is the record: other fields that spell a short form are ignored
(datasets such as UltraChat keep a ``prompt`` beside their ``messages``). Every turn needs a
known role and non-empty text; extra keys of a turn are dropped. There must be a user turn.

- SFT (``sft_record``): every assistant turn is trained on, so the last turn must be the
  assistant's (one that ends on another role trains nothing after its last answer).
- Eval and prompts (``prompt_record``): the conversation to continue is ``messages`` up to
  and including the last user turn. After it, at most one assistant turn may follow: it is
  the reference answer when ``answer`` is absent (a record whose ``answer`` is set keeps that
  answer, and the trailing turn is not used). ``prompt`` of the result is the last user turn,
  the text shown in tables and compared by the eval-leak guard.

A record that cannot be used gives None and a reason (``flywheel.core.records.quarantined``
makes it a quarantine row with its line); nothing here drops a record silently.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

ROLES = ("system", "user", "assistant", "tool")  # tool: a tool's result (agent episodes)
# (prompt field, response field) pairs of an SFT record, tried in order; the first present wins.
PAIRS = (("prompt", "response"), ("prompt", "completion"), ("instruction", "output"))
Messages = list[dict[str, str]]
Parsed = tuple[dict[str, Any] | None, str]  # (example, "") or (None, quarantine reason)


def turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def conversation(prompt: str, response: str) -> dict[str, Messages]:
    """The SFT example of one user turn and its answer."""
    return {"messages": [turn("user", prompt), turn("assistant", response)]}


def with_system(messages: Messages, system_prompt: str | None) -> Messages:
    """``messages`` with ``system_prompt`` as a first system turn, unless it has one already
    (a record's own system turn wins over the spec's default) or there is none to add."""
    if not system_prompt or any(m["role"] == "system" for m in messages):
        return messages
    return [turn("system", system_prompt), *messages]


def dumps(messages: Messages) -> str:
    """A conversation as the JSON text a Parquet column holds (and ids are hashed from)."""
    return json.dumps(messages, ensure_ascii=False, separators=(",", ":"))


def loads(text: str) -> Messages:
    """The conversation of a ``messages`` column value (``dumps``'s inverse)."""
    return json.loads(text)


def answered(conversation: str | None, prompt: str, response: str) -> str:
    """A training row's ``messages`` JSON: the ``conversation`` continued (``dumps`` JSON;
    None or empty: ``prompt`` as its one user turn) with ``response`` as the assistant's."""
    turns = loads(conversation) if conversation else [turn("user", prompt)]
    return dumps([*turns, turn("assistant", response)])


def conversation_id(messages: Messages) -> str:
    """A stable id of a conversation to continue: the first 16 hex digits of a sha1.

    One lone user turn hashes its text alone, as prompt ids always did, so the built-in
    prompts keep their ids (and training sets their rows); any other conversation hashes
    all of its turns, so the same question under another system prompt is another prompt.
    """
    if len(messages) == 1 and messages[0]["role"] == "user":
        blob = messages[0]["content"]
    else:
        blob = dumps(messages)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def last_user(messages: Messages) -> str:
    """The text of the last user turn: the prompt a table shows."""
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def render_prompts(tokenizer: Any, conversations: list[Messages | str]) -> list[str]:
    """The text a model continues for each conversation: every turn (system and earlier
    turns included) through the tokenizer's chat template, plus the assistant header
    (``add_generation_prompt``). SFT renders the same turns with the same template, so this
    is exactly the prefix the model was trained to continue. A plain string is one user turn.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; use a flywheel checkpoint")
    return [
        tokenizer.apply_chat_template(
            [turn("user", c)] if isinstance(c, str) else c,
            add_generation_prompt=True,
            tokenize=False,
        )
        for c in conversations
    ]


def parse_messages(value: Any) -> tuple[Messages | None, str]:
    """A checked list of ``{role, content}`` turns with a user turn, or None and why not."""
    if not isinstance(value, list):
        return None, "messages_not_a_list"
    if not value:
        return None, "empty_messages"
    out = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            return None, "message_without_text_content"
        if m.get("role") not in ROLES:
            return None, "unknown_role"
        if not m["content"].strip():
            return None, "empty_message"
        out.append(turn(m["role"], m["content"]))
    if not any(m["role"] == "user" for m in out):
        return None, "no_user_turn"
    return out, ""


# -- SFT -------------------------------------------------------------------------------------
def sft_record(obj: dict[str, Any]) -> Parsed:
    """``{"messages": [...]}`` ending on the assistant's turn from one raw SFT record."""
    if "messages" in obj:
        messages, reason = parse_messages(obj["messages"])
        if messages is None:
            return None, reason
        if messages[-1]["role"] != "assistant":
            return None, "does_not_end_with_assistant"
        return {"messages": messages}, ""
    return _pair(obj)


def _pair(obj: dict[str, Any]) -> Parsed:
    # The pair whose both fields are present; else the first partly present one, to say
    # which field is missing.
    present = [(p, r) for p, r in PAIRS if p in obj and r in obj]
    present = present or [(p, r) for p, r in PAIRS if p in obj or r in obj]
    if not present:
        return None, "missing_fields"
    p, r = present[0]
    prompt, response = obj.get(p), obj.get(r)
    if prompt is None:
        return None, f"missing_{p}"
    if response is None:
        return None, f"missing_{r}"
    if not isinstance(prompt, str) or not isinstance(response, str):
        return None, "field_not_a_string"
    extra = obj.get("input") if p == "instruction" else None
    if extra is not None and not isinstance(extra, str):
        return None, "field_not_a_string"
    if not prompt.strip():
        return None, f"empty_{p}"
    if not response.strip():
        return None, f"empty_{r}"
    if extra and extra.strip():
        prompt = f"{prompt}\n\n{extra}"  # Alpaca's input is context for the instruction
    return conversation(prompt, response), ""


# -- eval tasks and prompts --------------------------------------------------------------------
def prompt_record(obj: dict[str, Any], system_prompt: str | None = None) -> Parsed:
    """``{"messages", "prompt", "answer", "id"}`` from one raw eval or prompt record:
    the conversation to continue (``system_prompt`` added where it has no system turn), its
    last user turn, the reference answer (a string, or None) and the record's id (or None)."""
    if "messages" in obj:
        messages, reason = parse_messages(obj["messages"])
        if messages is None:
            return None, reason
        last = max(i for i, m in enumerate(messages) if m["role"] == "user")
        after = messages[last + 1 :]
        if len(after) > 1:
            return None, "turns_after_the_answer"
        if after and after[0]["role"] != "assistant":
            return None, "system_turn_after_last_user"
        messages, trailing = messages[: last + 1], after[0]["content"] if after else None
    else:
        prompt = obj.get("prompt")
        if prompt is None:
            return None, "missing_prompt"
        if not isinstance(prompt, str):
            return None, "prompt_not_a_string"
        if not prompt.strip():
            return None, "empty_prompt"
        messages, trailing = [turn("user", prompt)], None
    answer, reason = _answer(obj.get("answer"))
    if reason:
        return None, reason
    rid, reason = _id(obj.get("id"))
    if reason:
        return None, reason
    messages = with_system(messages, system_prompt)
    example = {
        "messages": messages,
        "prompt": last_user(messages),
        "answer": answer if answer is not None else trailing,
        "id": rid,
    }
    return example, ""


def _answer(answer: Any) -> tuple[str | None, str]:
    if answer is None:
        return None, ""
    # JSON numbers are fine answers ({"answer": 19}); booleans and containers are not.
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        return None, "answer_not_a_string_or_number"
    if not str(answer).strip():
        return None, "empty_answer"
    return str(answer), ""


def _id(rid: Any) -> tuple[str | None, str]:
    if rid is None:
        return None, ""
    if isinstance(rid, bool) or not isinstance(rid, str | int):
        return None, "id_not_a_string_or_integer"
    if not str(rid).strip():
        return None, "empty_id"
    return str(rid), ""

"""SFT data: instruction-response pairs from a file or the built-in generator, as conversations.

    python -c "from flywheel.core.spec import load_spec; from flywheel.train.sft_data import
    load_sft_data; \
print(load_sft_data(load_spec().sft.data).counts)"

Every example comes out as ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}``
(TRL's conversational format), whatever it was on disk:

- jsonl or parquet records with ``prompt``/``response`` (also ``prompt``/``completion`` and
  Alpaca's ``instruction``/``output`` with an optional ``input``), or a ``messages`` list;
- ``arithmetic``: ``sft.data.num_examples`` problems from ``flywheel.loop.tasks``.

A record that cannot be used (bad JSON, missing or empty fields, wrong types, a conversation
without an assistant turn) is quarantined with its line (jsonl) or row (parquet) number and
reason, and counted; an input with no usable record is an error.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from flywheel.core.records import Loaded, quarantined, read_jsonl
from flywheel.core.settings.train import SftData
from flywheel.data.arithmetic import addition_examples, arithmetic_examples

ROLES = ("system", "user", "assistant")
# (prompt field, response field) pairs, tried in order; the first pair present wins.
PAIRS = (("prompt", "response"), ("prompt", "completion"), ("instruction", "output"))


def conversation(prompt: str, response: str) -> dict[str, list[dict[str, str]]]:
    return {
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": response},
        ]
    }


def _messages(value: Any) -> tuple[dict[str, Any] | None, str]:
    if not isinstance(value, list) or not value:
        return None, "messages_not_a_list" if not isinstance(value, list) else "empty_messages"
    out = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            return None, "message_without_text_content"
        if m.get("role") not in ROLES:
            return None, "unknown_role"
        if not m["content"].strip():
            return None, "empty_message"
        out.append({"role": m["role"], "content": m["content"]})
    roles = [m["role"] for m in out]
    if "user" not in roles:
        return None, "no_user_turn"
    # A conversation that does not end on the assistant trains nothing after its last answer,
    # and one with no assistant turn trains nothing at all (assistant-only loss).
    if roles[-1] != "assistant":
        return None, "does_not_end_with_assistant"
    return {"messages": out}, ""


def _pair(obj: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
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


def sft_example(obj: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """A conversation from one raw record, or None and the quarantine reason."""
    if "messages" in obj:
        return _messages(obj["messages"])
    return _pair(obj)


def _parquet_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise ValueError(f"{path}: not a readable Parquet file: {exc}") from None
    return list(enumerate(table.to_pylist(), start=1))


def load_sft_data(data: SftData) -> Loaded:
    """The usable conversations of ``sft.data`` (and of its ``extra`` sets, appended) and the
    quarantined records, with reasons."""
    loaded = _load_one(data)
    for more in data.extra:
        other = load_sft_data(more)
        loaded = Loaded(
            loaded.examples + other.examples,
            loaded.quarantine + other.quarantine,
            f"{loaded.source} + {other.source}",
        )
    return loaded


def _load_one(data: SftData) -> Loaded:
    if data.kind == "arithmetic":
        problems = arithmetic_examples(data.num_examples, data.max_operand, data.seed)
        examples = [conversation(p["prompt"], p["answer"]) for p in problems]
        about = (
            f"arithmetic(n={data.num_examples}, max_operand={data.max_operand}, seed={data.seed})"
        )
        return Loaded(examples, [], about)
    if data.kind == "addition":
        problems = addition_examples(
            data.num_examples, data.min_digits, data.max_digits, data.width, data.seed
        )
        examples = [conversation(p["prompt"], p["answer"]) for p in problems]
        about = (
            f"addition(n={data.num_examples}, digits={data.min_digits}-{data.max_digits}, "
            f"width={data.width}, seed={data.seed})"
        )
        return Loaded(examples, [], about)
    if data.path is None:
        raise ValueError(f"sft.data.path is required for kind {data.kind!r}")
    path = Path(data.path)
    if data.kind == "jsonl":
        records, bad = read_jsonl(path)
    else:
        records, bad = _parquet_rows(path), []
    examples = []
    for lineno, obj in records:
        example, reason = sft_example(obj)
        if example is None:
            bad.append(quarantined(str(path), lineno, reason, obj))
        else:
            examples.append(example)
    bad.sort(key=lambda q: q["line"])
    if not examples:
        what = "line" if data.kind == "jsonl" else "row"
        reasons = ", ".join(f"{what} {q['line']}: {q['reason']}" for q in bad[:5]) or "empty"
        raise ValueError(f"sft.data: {path} has no usable examples ({reasons})")
    return Loaded(examples, bad, f"{data.kind}:{path}")


def data_fingerprint(loaded: Loaded) -> str:
    """A content hash of the examples: the same conversations, the same fingerprint."""
    h = hashlib.sha256()
    for example in loaded.examples:
        h.update(json.dumps(example, sort_keys=True).encode() + b"\n")
    return h.hexdigest()[:16]

"""SFT data: instruction-response pairs from a file or the built-in generator, as conversations.

    python -c "from flywheel.core.spec import load_spec; from flywheel.train.sft_data import
    load_sft_data; \
print(load_sft_data(load_spec().sft.data).counts)"

Every example comes out as ``{"messages": [...]}`` ending on the assistant's turn (TRL's
conversational format, system turns kept), whatever it was on disk:

- jsonl or parquet records in the record schema of ``flywheel.core.chat`` (``sft_record``):
  a ``messages`` list, or ``prompt``/``response`` (also ``prompt``/``completion`` and
  Alpaca's ``instruction``/``output`` with an optional ``input``);
- ``arithmetic`` and ``addition``: ``sft.data.num_examples`` built-in problems
  (``flywheel.data.arithmetic``), one user turn and its answer each.

A record that cannot be used (bad JSON, missing or empty fields, wrong types, a conversation
that does not end on the assistant's turn) is quarantined with its line (jsonl) or row
(parquet) number and reason, and counted; an input with no usable record is an error.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from flywheel.core.chat import conversation, sft_record
from flywheel.core.records import Loaded, quarantined, read_jsonl
from flywheel.core.settings.train import SftData
from flywheel.data.arithmetic import addition_examples, arithmetic_examples


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
    if data.kind == "python":
        records, bad, path = made_rows(data), [], Path(f"{data.function}")
    elif data.path is None:
        raise ValueError(f"sft.data.path is required for kind {data.kind!r}")
    else:
        path = Path(data.path)
        records, bad = read_jsonl(path) if data.kind == "jsonl" else (_parquet_rows(path), [])
    examples = []
    for lineno, obj in records:
        example, reason = sft_record(obj)
        if example is None:
            bad.append(quarantined(str(path), lineno, reason, obj))
        else:
            examples.append(example)
    bad.sort(key=lambda q: q["line"])
    if not examples:
        what = "line" if data.kind == "jsonl" else "row"
        reasons = ", ".join(f"{what} {q['line']}: {q['reason']}" for q in bad[:5]) or "empty"
        raise ValueError(f"sft.data: {path} has no usable examples ({reasons})")
    if data.kind == "python":
        about = f"python:{data.function}(n={data.num_examples}, seed={data.seed}, {data.settings})"
        return Loaded(examples, bad, about)
    return Loaded(examples, bad, f"{data.kind}:{path}")


def made_rows(data: SftData) -> list[tuple[int, dict[str, Any]]]:
    """The records ``sft.data.function`` returns, numbered from 1 like file lines."""
    module_name, _, name = str(data.function).partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"sft.data.function {data.function!r} cannot be imported: {exc}") from None
    records = function(num_examples=data.num_examples, seed=data.seed, **data.settings)
    return [
        (i, dict(r) if isinstance(r, dict) else {"record": r}) for i, r in enumerate(records, 1)
    ]


def data_fingerprint(loaded: Loaded) -> str:
    """A content hash of the examples: the same conversations, the same fingerprint."""
    h = hashlib.sha256()
    for example in loaded.examples:
        h.update(json.dumps(example, sort_keys=True).encode() + b"\n")
    return h.hexdigest()[:16]

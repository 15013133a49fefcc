"""Problems with known answers: built-in arithmetic, and task files of prompt/answer records.

    python -c "from flywheel.tasks import arithmetic_examples; print(arithmetic_examples(3, 20, 0))"

The same generator feeds SFT data (``sft.data.kind: arithmetic``) and evaluation tasks
(``eval.tasks[].kind: arithmetic``); they differ only by seed, so a model is evaluated on
problems drawn from the distribution it was tuned on, mostly not the same ones.

A task file is JSON Lines, one ``{"prompt": ..., "answer": ...}`` object per line. A record
that cannot be used (bad JSON or UTF-8, a missing or empty field, an answer the task's
verifier cannot check) is quarantined with its line number and reason, never silently
dropped; a file with no usable record at all is an error.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel.train.settings import EvalTask
from flywheel.verifiers import parse_number

RAW_CHARS = 200  # characters of a bad record kept in its quarantine row, to show what it was


@dataclass
class Loaded:
    """Records read from one input: the usable ones, and the quarantined ones with reasons."""

    examples: list[dict[str, Any]]
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""

    @property
    def counts(self) -> dict[str, int]:
        reasons = Counter(q["reason"] for q in self.quarantine)
        return {
            "examples": len(self.examples),
            "quarantined": len(self.quarantine),
            **{f"quarantined/{r}": n for r, n in sorted(reasons.items())},
        }


def quarantined(source: str, line: int, reason: str, raw: Any) -> dict[str, Any]:
    """One quarantine row: where the record was, why it was refused, and what it held."""
    text = raw if isinstance(raw, str) else json.dumps(raw, default=str)
    return {"source": source, "line": line, "reason": reason, "raw": text[:RAW_CHARS]}


def arithmetic_examples(n: int, max_operand: int, seed: int) -> list[dict[str, str]]:
    """``n`` problems like ``What is 7 + 12?`` -> ``19``; the same arguments, the same list.

    Subtraction puts the larger operand first, so every answer is a non-negative integer: a
    tiny model then learns one digit vocabulary, and a leading "-" never decides correctness.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        if rng.random() < 0.5:
            out.append({"prompt": f"What is {a} + {b}?", "answer": str(a + b)})
        else:
            a, b = max(a, b), min(a, b)
            out.append({"prompt": f"What is {a} - {b}?", "answer": str(a - b)})
    return out


def addition_examples(
    n: int, min_digits: int, max_digits: int, width: int, seed: int
) -> list[dict[str, str]]:
    """``n`` sums written least-significant digit first, zero-padded to a fixed width.

    ``a=123, b=45, width=5`` is the prompt ``32100+54000`` and the answer ``861000`` (the
    sum, padded to ``width + 1`` digits and reversed). Reversed digits let a causal model
    emit each answer digit right after the operand digits and carry it depends on; the fixed
    width puts every digit at the same position whatever the number's length, so a model
    trained on 3-digit sums has seen every position (holding zeros) and can extend to 4
    and 5 digits from its own verified answers. Operand lengths are uniform over
    ``[min_digits, max_digits]``; the same arguments give the same list.
    """
    if not 1 <= min_digits <= max_digits <= width:
        raise ValueError(
            f"need 1 <= min_digits <= max_digits <= width, got {min_digits}, {max_digits}, {width}"
        )
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = (_number(rng, rng.randint(min_digits, max_digits)) for _ in range(2))
        prompt = f"{_reversed(a, width)}+{_reversed(b, width)}"
        out.append({"prompt": prompt, "answer": _reversed(a + b, width + 1)})
    return out


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


def _reversed(value: int, width: int) -> str:
    return str(value).zfill(width)[::-1]


def read_jsonl(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]]]:
    """The JSON objects of a JSONL file with their 1-based line numbers, and the bad lines.

    Blank lines are not records and are skipped; every other line is a record or a
    quarantine row. A missing file is an error that names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    records: list[tuple[int, dict[str, Any]]] = []
    bad: list[dict[str, Any]] = []
    source = str(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad.append(quarantined(source, lineno, "invalid_utf8", f"{exc}"))
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                bad.append(quarantined(source, lineno, "invalid_json", f"{exc}: {text}"))
                continue
            if not isinstance(obj, dict):
                bad.append(quarantined(source, lineno, "not_an_object", obj))
                continue
            records.append((lineno, obj))
    return records, bad


def task_record(obj: dict[str, Any], verifier: str) -> tuple[dict[str, str] | None, str]:
    """A ``{"prompt", "answer"}`` example from a raw record, or None and the reason why not."""
    prompt, answer = obj.get("prompt"), obj.get("answer")
    if prompt is None:
        return None, "missing_prompt"
    if answer is None:
        return None, "missing_answer"
    if not isinstance(prompt, str):
        return None, "prompt_not_a_string"
    # JSON numbers are fine answers ({"answer": 19}); booleans and containers are not.
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        return None, "answer_not_a_string_or_number"
    answer = str(answer)
    if not prompt.strip():
        return None, "empty_prompt"
    if not answer.strip():
        return None, "empty_answer"
    if verifier == "numeric" and parse_number(answer) is None:
        return None, "answer_not_a_number"
    return {"prompt": prompt, "answer": answer}, ""


def load_task_examples(task: EvalTask) -> Loaded:
    """The problems of one evaluation task: at most ``task.num_examples`` usable ones.

    Built-in arithmetic is generated; a jsonl task is read in file order, and its first
    ``num_examples`` usable records are kept (bad ones are quarantined with their line).
    """
    if task.kind == "arithmetic":
        examples = arithmetic_examples(task.num_examples, task.max_operand, task.seed)
        return Loaded(examples, [], f"arithmetic(max_operand={task.max_operand})")
    if task.kind == "addition":
        examples = addition_examples(
            task.num_examples, task.min_digits, task.max_digits, task.width, task.seed
        )
        about = f"addition(digits={task.min_digits}-{task.max_digits}, width={task.width})"
        return Loaded(examples, [], about)
    if task.path is None:
        raise ValueError(f"eval task {task.name!r}: kind jsonl needs a path")
    try:
        records, bad = read_jsonl(task.path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"eval task {task.name!r}: {exc}") from None
    source = str(task.path)
    examples: list[dict[str, str]] = []
    for lineno, obj in records:
        if len(examples) == task.num_examples:
            break
        example, reason = task_record(obj, task.verifier)
        if example is None:
            bad.append(quarantined(source, lineno, reason, obj))
        else:
            examples.append(example)
    bad.sort(key=lambda q: q["line"])
    if not examples:
        reasons = ", ".join(f"line {q['line']}: {q['reason']}" for q in bad[:5]) or "empty file"
        raise ValueError(f"eval task {task.name!r}: {source} has no usable records ({reasons})")
    return Loaded(examples, bad, source)

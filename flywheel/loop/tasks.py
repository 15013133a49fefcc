"""Evaluation tasks: problems with known answers, built in (flywheel.data.arithmetic) or from files.

    python -c "from flywheel.core.spec import load_spec; from flywheel.loop.tasks import \
load_task_examples as f; print(f(load_spec().eval.tasks[0]).counts)"

A task file is JSON Lines in the record schema of ``flywheel.core.chat``: ``{"prompt",
"answer"}``, or ``{"messages": [...], "answer"?}`` whose conversation is continued up to its
last user turn (a trailing assistant turn is the answer when ``answer`` is absent). Every
problem comes out as ``{"messages", "prompt", "answer"}``: the conversation to continue
(``system_prompt`` first where it has no system turn), its last user turn and the answer.
A record that cannot be used (bad JSON or UTF-8, a missing or empty field, a malformed
conversation, no answer, an answer the task's verifier cannot check) is quarantined with
its line number and reason, never silently dropped; a file with no usable record at all is
an error.
"""

from __future__ import annotations

from typing import Any

from flywheel.core.chat import prompt_record, turn, with_system
from flywheel.core.records import Loaded, quarantined, read_jsonl
from flywheel.core.settings.train import BUILTIN_EVAL_EXAMPLES, EvalTask
from flywheel.data.arithmetic import addition_examples, arithmetic_examples
from flywheel.loop.verifiers import parse_number


def task_record(
    obj: dict[str, Any], verifier: str, system_prompt: str | None = None
) -> tuple[dict[str, Any] | None, str]:
    """A ``{"messages", "prompt", "answer"}`` problem from a raw record (the record schema of
    ``flywheel.core.chat``: a reference answer is required), or None and the reason why not."""
    example, reason = prompt_record(obj, system_prompt)
    if example is None:
        return None, reason
    answer = example["answer"]
    if answer is None:
        return None, "missing_answer"
    if verifier == "numeric" and parse_number(answer) is None:
        return None, "answer_not_a_number"
    return {"messages": example["messages"], "prompt": example["prompt"], "answer": answer}, ""


def builtin_task(problems: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, Any]]:
    """Built-in ``{"prompt", "answer"}`` problems as task records: one user turn each."""
    return [
        {
            "messages": with_system([turn("user", p["prompt"])], system_prompt),
            "prompt": p["prompt"],
            "answer": p["answer"],
        }
        for p in problems
    ]


def load_task_examples(task: EvalTask) -> Loaded:
    """The problems of one evaluation task: at most ``task.num_examples`` usable ones.

    Built-in kinds generate ``num_examples`` problems (``BUILTIN_EVAL_EXAMPLES`` when unset);
    a jsonl task is read in file order and keeps its first ``num_examples`` usable records,
    or every usable record when it is unset (bad ones are quarantined with their line).
    """
    # A generator needs a count, a file does not: unset, a jsonl task is read whole. The
    # report's n/<task> says how many were scored either way.
    count = task.num_examples or BUILTIN_EVAL_EXAMPLES
    if task.kind == "arithmetic":
        problems = arithmetic_examples(count, task.max_operand, task.seed)
        examples = builtin_task(problems, task.system_prompt)
        return Loaded(examples, [], f"arithmetic(max_operand={task.max_operand})")
    if task.kind == "addition":
        problems = addition_examples(count, task.min_digits, task.max_digits, task.width, task.seed)
        examples = builtin_task(problems, task.system_prompt)
        about = f"addition(digits={task.min_digits}-{task.max_digits}, width={task.width})"
        return Loaded(examples, [], about)
    if task.path is None:
        raise ValueError(f"eval task {task.name!r}: kind jsonl needs a path")
    try:
        records, bad = read_jsonl(task.path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"eval task {task.name!r}: {exc}") from None
    source = str(task.path)
    examples: list[dict[str, Any]] = []
    for lineno, obj in records:
        if task.num_examples is not None and len(examples) == task.num_examples:
            break
        example, reason = task_record(obj, task.verifier.kind, task.system_prompt)
        if example is None:
            bad.append(quarantined(source, lineno, reason, obj))
        else:
            examples.append(example)
    bad.sort(key=lambda q: q["line"])
    if not examples:
        reasons = ", ".join(f"line {q['line']}: {q['reason']}" for q in bad[:5]) or "empty file"
        raise ValueError(f"eval task {task.name!r}: {source} has no usable records ({reasons})")
    return Loaded(examples, bad, source)

"""The prompts a flywheel cycle generates from: built-in task problems or a JSON Lines file.

    python -c "from flywheel.loop.prompts import load_prompts; from flywheel.core.settings.loop
    import \
PromptSource; print(load_prompts(PromptSource(num_prompts=3), cycle=1).examples)"

Every prompt becomes ``{"prompt_id", "prompt", "answer"}`` (``answer`` is None when the
source has no reference answer, e.g. a jsonl record without one). ``prompt_id`` is the
record's ``id`` when it has one, else the first 16 hex digits of the sha1 of the prompt text,
so the same prompt has the same id in every cycle and every run.

A prompt that must not be generated from is quarantined with a reason, never silently
dropped: ``eval_prompt`` when it is one of the evaluation prompts (so eval problems never leak
into training data through accepted generations), ``duplicate_prompt`` when an earlier prompt
of the cycle has the same text (both compared after stripping whitespace), ``duplicate_id``
when a jsonl id repeats, and the jsonl record problems of ``flywheel.loop.tasks`` (with the line).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flywheel.core.records import Loaded, quarantined, read_jsonl
from flywheel.core.settings.loop import PromptSource
from flywheel.core.spec import Spec
from flywheel.data.arithmetic import addition_examples, arithmetic_examples
from flywheel.loop.tasks import load_task_examples


def prompt_id(prompt: str) -> str:
    """The id of a prompt without one: stable across runs, cycles and machines."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:16]


def normalize(prompt: str) -> str:
    """What two prompts are compared by: the text without surrounding whitespace."""
    return prompt.strip()


def eval_prompts(spec: Spec) -> set[str]:
    """The (normalized) prompts of every ``eval.tasks`` task: never to be trained on."""
    return {
        normalize(example["prompt"])
        for task in spec.eval.tasks
        for example in load_task_examples(task).examples
    }


def load_prompts(source: PromptSource, cycle: int, exclude: Iterable[str] = frozenset()) -> Loaded:
    """Cycle ``cycle``'s prompts from ``source``, without those in ``exclude`` (quarantined).

    Built-in kinds draw ``num_prompts`` problems with seed ``source.seed + cycle``; a jsonl
    file is read whole (its bad records quarantined) and, when it holds more usable prompts
    than ``num_prompts``, a seeded sample of them is kept in file order. An empty result is an
    error that says why.
    """
    if cycle < 0:
        raise ValueError(f"cycle must be >= 0, got {cycle}")
    seed = source.seed + cycle
    if source.kind == "jsonl":
        loaded = _jsonl_prompts(source, set(map(normalize, exclude)))
        if len(loaded.examples) > source.num_prompts:
            keep = sorted(
                random.Random(seed).sample(range(len(loaded.examples)), source.num_prompts)
            )
            loaded.examples = [loaded.examples[i] for i in keep]
    else:
        if source.kind == "addition":
            low, high = source.digits(cycle)
            raw = addition_examples(source.num_prompts, low, high, source.width, seed)
            about = f"addition(digits={low}-{high}, width={source.width})"
        else:
            raw = arithmetic_examples(source.num_prompts, source.max_operand, seed)
            about = f"arithmetic(max_operand={source.max_operand})"
        records = [
            (i, {"prompt": r["prompt"], "answer": r["answer"]}) for i, r in enumerate(raw, 1)
        ]
        loaded = _checked(records, [], f"{about}, seed {seed}", set(map(normalize, exclude)))
    if not loaded.examples:
        reasons = ", ".join(f"{k}={v}" for k, v in loaded.counts.items() if "/" in k)
        raise ValueError(f"prompts {loaded.source}: no usable prompt for cycle {cycle} ({reasons})")
    return loaded


def _jsonl_prompts(source: PromptSource, exclude: set[str]) -> Loaded:
    if source.path is None:  # the settings validator requires it; this guards direct use
        raise ValueError("prompts.path is required for kind 'jsonl'")
    records, bad = read_jsonl(Path(source.path))
    return _checked(records, bad, str(source.path), exclude)


def _checked(
    records: list[tuple[int, dict[str, Any]]],
    bad: list[dict[str, Any]],
    source: str,
    exclude: set[str],
) -> Loaded:
    """Usable prompt examples from raw ``(line, record)`` pairs; the rest quarantined."""
    seen_prompts: set[str] = set()
    seen_ids: set[str] = set()
    examples: list[dict[str, Any]] = []
    for line, obj in records:
        example, reason = prompt_record(obj)
        if example is not None:
            key = normalize(example["prompt"])
            if key in exclude:
                example, reason = None, "eval_prompt"
            elif key in seen_prompts:
                example, reason = None, "duplicate_prompt"
            elif example["prompt_id"] in seen_ids:
                example, reason = None, "duplicate_id"
        if example is None:
            bad.append(quarantined(source, line, reason, obj))
            continue
        seen_prompts.add(key)
        seen_ids.add(example["prompt_id"])
        examples.append(example)
    bad.sort(key=lambda q: q["line"])
    return Loaded(examples, bad, source)


def prompt_record(obj: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """A ``{"prompt_id", "prompt", "answer"}`` example, or None and the reason why not."""
    prompt, answer, rid = obj.get("prompt"), obj.get("answer"), obj.get("id")
    if prompt is None:
        return None, "missing_prompt"
    if not isinstance(prompt, str):
        return None, "prompt_not_a_string"
    if not prompt.strip():
        return None, "empty_prompt"
    if answer is not None:
        # JSON numbers are fine answers ({"answer": 19}); booleans and containers are not.
        if isinstance(answer, bool) or not isinstance(answer, str | int | float):
            return None, "answer_not_a_string_or_number"
        answer = str(answer)
        if not answer.strip():
            return None, "empty_answer"
    if rid is not None:
        if isinstance(rid, bool) or not isinstance(rid, str | int):
            return None, "id_not_a_string_or_integer"
        rid = str(rid)
        if not rid.strip():
            return None, "empty_id"
    return {"prompt_id": rid or prompt_id(prompt), "prompt": prompt, "answer": answer}, ""

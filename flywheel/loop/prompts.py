"""The prompts a flywheel cycle generates from: built-in task problems or a JSON Lines file.

    python -c "from flywheel.loop.prompts import load_prompts; from flywheel.core.settings.loop
    import \
PromptSource; print(load_prompts(PromptSource(num_prompts=3), cycle=1).examples)"

A jsonl file holds records in the schema of ``flywheel.core.chat`` (``{"prompt", "answer"?,
"id"?}`` or ``{"messages": [...], "answer"?, "id"?}``). Every prompt becomes ``{"prompt_id",
"prompt", "messages", "answer"}``: ``messages`` is the conversation to continue (up to its
last user turn, ``generation.system_prompt`` first where it has no system turn), ``prompt``
its last user turn, ``answer`` None when the source has no reference answer. ``prompt_id`` is
the record's ``id`` when it has one, else ``chat.conversation_id`` of the whole conversation,
so the same prompt has the same id in every cycle and every run.

A built-in generator draws again instead of repeating a problem or asking an eval one. A
file's prompt that must not be generated from is quarantined with a reason, never silently
dropped: ``eval_prompt`` when its last user turn is one of the evaluation prompts (so eval
problems never leak into training data through accepted generations, whatever the system
prompt), ``duplicate_prompt`` when an earlier prompt of the cycle has the same conversation
(turns compared after stripping whitespace), ``duplicate_id`` when a jsonl id repeats, and
the record problems of ``flywheel.core.chat`` (with the line).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flywheel.core import chat
from flywheel.core.records import Loaded, quarantined, read_jsonl
from flywheel.core.settings.loop import PromptSource
from flywheel.core.spec import Spec
from flywheel.data.arithmetic import addition_examples, arithmetic_examples
from flywheel.loop.tasks import load_task_examples


def normalize(prompt: str) -> str:
    """What a prompt is compared with eval prompts by: the text without surrounding
    whitespace."""
    return prompt.strip()


def conversation_key(messages: chat.Messages) -> str:
    """What two prompts are compared by: every turn, its text stripped."""
    return chat.dumps([chat.turn(m["role"], normalize(m["content"])) for m in messages])


def eval_prompts(spec: Spec) -> set[str]:
    """The (normalized) prompts of every ``eval.tasks`` task: never to be trained on."""
    return {
        normalize(example["prompt"])
        for task in spec.eval.tasks
        for example in load_task_examples(task).examples
    }


def load_prompts(
    source: PromptSource,
    cycle: int,
    exclude: Iterable[str] = frozenset(),
    system_prompt: str | None = None,
) -> Loaded:
    """Cycle ``cycle``'s prompts from ``source``, without those whose last user turn is in
    ``exclude`` (quarantined); ``system_prompt`` (``generation.system_prompt``) comes first in
    every conversation that has no system turn.

    Built-in kinds draw ``num_prompts`` distinct problems with seed ``source.seed + cycle``,
    none an eval problem (``_drawn``); a jsonl
    file is read whole (its bad records quarantined) and, when it holds more usable prompts
    than ``num_prompts``, a seeded sample of them is kept in file order. An empty result is an
    error that says why.
    """
    if cycle < 0:
        raise ValueError(f"cycle must be >= 0, got {cycle}")
    seed = source.seed + cycle
    if source.kind == "jsonl":
        loaded = _jsonl_prompts(source, set(map(normalize, exclude)), system_prompt)
        if len(loaded.examples) > source.num_prompts:
            keep = sorted(
                random.Random(seed).sample(range(len(loaded.examples)), source.num_prompts)
            )
            loaded.examples = [loaded.examples[i] for i in keep]
    else:
        excluded = set(map(normalize, exclude))
        raw, about = _drawn(source, cycle, seed, excluded)
        records = [
            (i, {"prompt": r["prompt"], "answer": r["answer"]}) for i, r in enumerate(raw, 1)
        ]
        loaded = _checked(records, [], f"{about}, seed {seed}", excluded, system_prompt)
    if not loaded.examples:
        reasons = ", ".join(f"{k}={v}" for k, v in loaded.counts.items() if "/" in k)
        raise ValueError(f"prompts {loaded.source}: no usable prompt for cycle {cycle} ({reasons})")
    return loaded


DRAWS = (1, 2, 8, 32)  # how many times num_prompts a built-in generator may be asked for


def _drawn(
    source: PromptSource, cycle: int, seed: int, exclude: set[str]
) -> tuple[list[dict[str, str]], str]:
    """``num_prompts`` distinct built-in problems, none of them an eval problem: a repeat or
    an eval problem is drawn again, not skipped (a generator, unlike a file, has more). The
    generators are prefix-stable (the same seed and a larger n extend the same sequence), so
    a draw without repeats is exactly the first ``num_prompts`` problems. A space smaller
    than ``num_prompts`` gives every distinct problem it has."""
    if source.kind == "addition":
        low, high = source.digits(cycle)
        about = f"addition(digits={low}-{high}, width={source.width})"
    else:
        about = f"arithmetic(max_operand={source.max_operand})"
    want, picked = source.num_prompts, []
    for factor in DRAWS:
        if source.kind == "addition":
            raw = addition_examples(want * factor, low, high, source.width, seed)
        else:
            raw = arithmetic_examples(want * factor, source.max_operand, seed)
        seen: set[str] = set()
        picked = []
        for example in raw:
            key = normalize(example["prompt"])
            if key not in exclude and key not in seen:
                seen.add(key)
                picked.append(example)
                if len(picked) == want:
                    return picked, about
    return picked, about


def _jsonl_prompts(source: PromptSource, exclude: set[str], system_prompt: str | None) -> Loaded:
    if source.path is None:  # the settings validator requires it; this guards direct use
        raise ValueError("prompts.path is required for kind 'jsonl'")
    records, bad = read_jsonl(Path(source.path))
    return _checked(records, bad, str(source.path), exclude, system_prompt)


def _checked(
    records: list[tuple[int, dict[str, Any]]],
    bad: list[dict[str, Any]],
    source: str,
    exclude: set[str],
    system_prompt: str | None,
) -> Loaded:
    """Usable prompt examples from raw ``(line, record)`` pairs; the rest quarantined."""
    seen_prompts: set[str] = set()
    seen_ids: set[str] = set()
    examples: list[dict[str, Any]] = []
    for line, obj in records:
        example, reason = prompt_record(obj, system_prompt)
        if example is not None:
            key = conversation_key(example["messages"])
            if normalize(example["prompt"]) in exclude:
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


def prompt_record(
    obj: dict[str, Any], system_prompt: str | None = None
) -> tuple[dict[str, Any] | None, str]:
    """A ``{"prompt_id", "prompt", "messages", "answer"}`` example (``flywheel.core.chat``'s
    ``prompt_record``, with its id), or None and the reason why not."""
    example, reason = chat.prompt_record(obj, system_prompt)
    if example is None:
        return None, reason
    messages = example["messages"]
    return {
        "prompt_id": example["id"] or chat.conversation_id(messages),
        "prompt": example["prompt"],
        "messages": messages,
        "answer": example["answer"],
    }, ""

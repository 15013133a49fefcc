"""Verifiers: decide whether a model's completion answers a problem correctly.

    python -c "from flywheel.loop.verifiers import verify as v; print(v('numeric', 'It is 19.',
    '19'))"

A verifier is a function ``(completion, answer, pattern) -> bool``. Evaluation uses them to
score task accuracy, and the generation loop uses the same ones to accept or reject model
generations, so a completion counts as correct in exactly one way everywhere. Four are
built in; ``register_verifier`` adds more (e.g. a unit-test runner for code tasks).

- ``exact``: the completion, stripped, equals the answer, stripped.
- ``numeric``: the first number in the completion equals the answer as a number
  ("The answer is 19." and "19.0" both match "19"; "1,234" reads as 1234).
- ``contains``: the answer (stripped) occurs in the completion.
- ``regex``: ``pattern`` with ``{answer}`` replaced by the escaped answer matches somewhere
  in the completion (e.g. ``"answer: {answer}\\b"``).

``judge`` applies the spec's ``acceptance.verifier`` to a frame of generations (one row per
sampled completion) and says, for every row, whether it is accepted and why not:

- ``exact`` / ``numeric``: the verifier above against the row's reference ``answer``; a row
  without one is rejected ``no_reference``, a wrong one ``incorrect``.
- ``python``: ``fn(prompt, completion, answer) -> bool | (bool, reason)`` imported from
  ``package.module:function``; a call that raises rejects its row ``verifier_error: <exc>``.
- ``self_consistency``: majority vote across one prompt's samples, for prompts without a
  reference (see ``_judge_majority``).
- ``reward_model``: a local sequence-classification model's score >= threshold
  (``flywheel.loop.reward``; torch is imported only for this kind).
"""

from __future__ import annotations

import importlib
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:  # the settings model is only read here; importing it at runtime is not needed
    from flywheel.core.settings.loop import VerifierSettings

Verifier = Callable[[str, str, str | None], bool]

# A signed integer or decimal, with optional thousands separators ("1,234.5"). The sign is
# part of the number only when it directly precedes the digits: "-3" is minus three.
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


def parse_number(text: str) -> float | None:
    """The value of ``text`` if it is one number (surrounding spaces allowed), else None."""
    match = _NUMBER.fullmatch(text.strip())
    return float(match.group().replace(",", "")) if match else None


def first_number(text: str) -> float | None:
    """The value of the first number written in ``text``, or None if it has none."""
    match = _NUMBER.search(text)
    return float(match.group().replace(",", "")) if match else None


def exact(completion: str, answer: str, pattern: str | None = None) -> bool:
    return completion.strip() == answer.strip()


def numeric(completion: str, answer: str, pattern: str | None = None) -> bool:
    expected = parse_number(answer)
    if expected is None:
        raise ValueError(f"numeric verifier: the answer {answer!r} is not a number")
    got = first_number(completion)
    # isclose, not ==: "0.3" must match an answer computed as 0.1 + 0.2 in floating point.
    return got is not None and math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9)


def contains(completion: str, answer: str, pattern: str | None = None) -> bool:
    return answer.strip() in completion


def regex(completion: str, answer: str, pattern: str | None = None) -> bool:
    if not pattern:
        raise ValueError("regex verifier needs a pattern (e.g. 'answer: {answer}\\b')")
    # str.replace, not str.format: regexes use braces themselves (\d{3}).
    compiled = pattern.replace("{answer}", re.escape(answer.strip()))
    return re.search(compiled, completion) is not None


VERIFIERS: dict[str, Verifier] = {
    "exact": exact,
    "numeric": numeric,
    "contains": contains,
    "regex": regex,
}


def register_verifier(name: str, fn: Verifier, replace: bool = False) -> None:
    """Make ``fn`` available as verifier ``name``; replacing one needs ``replace=True``."""
    if not callable(fn):
        raise TypeError(f"verifier {name!r} must be callable, got {type(fn).__name__}")
    if name in VERIFIERS and not replace:
        raise ValueError(f"verifier {name!r} is already registered (pass replace=True)")
    VERIFIERS[name] = fn


def get_verifier(kind: str) -> Verifier:
    try:
        return VERIFIERS[kind]
    except KeyError:
        known = ", ".join(sorted(VERIFIERS))
        raise KeyError(f"unknown verifier {kind!r}; registered: {known}") from None


def verify(kind: str, completion: str, answer: str, pattern: str | None = None) -> bool:
    """Whether ``completion`` answers correctly, judged by the verifier ``kind``."""
    return bool(get_verifier(kind)(completion, answer, pattern))


# -- judging generations: the acceptance step's verifier ----------------------------------
# One verdict per row: (verified, reason when rejected, response to train on, score or None).
Verdict = tuple[bool, str | None, str, float | None]
JUDGE_COLUMNS = {
    "verified": pl.Boolean,
    "reason": pl.String,
    "response": pl.String,
    "score": pl.Float64,
}


def judge(settings: VerifierSettings, rows: pl.DataFrame, batch_size: int = 16) -> pl.DataFrame:
    """``rows`` (prompt, completion, optional answer; prompt_id for self_consistency) plus
    ``verified``, ``reason`` (null when verified), ``response`` and ``score``, row for row.

    The response is the text to train on: the stripped completion, or for self_consistency
    the majority answer. ``score`` is the reward (reward_model), the majority's share of the
    prompt's samples (self_consistency), or null. ``batch_size`` batches reward-model scoring.
    """
    needed = {"prompt", "completion"} | (
        {"prompt_id"} if settings.kind == "self_consistency" else set()
    )
    missing = sorted(needed - set(rows.columns))
    if missing:
        raise ValueError(f"judge ({settings.kind}) needs columns {missing}; got {rows.columns}")
    for col in ("answer", "prompt_id"):
        if col not in rows.columns:
            rows = rows.with_columns(pl.lit(None, dtype=pl.String).alias(col))
    prompts, completions = rows["prompt"].to_list(), rows["completion"].fill_null("").to_list()
    answers = rows["answer"].cast(pl.String).to_list()
    kind = settings.kind
    if kind in ("exact", "numeric"):
        verdicts = [_judge_reference(kind, c, a) for c, a in zip(completions, answers, strict=True)]
    elif kind == "python":
        fn = load_function(settings.function or "")
        verdicts = [_judge_call(fn, *r) for r in zip(prompts, completions, answers, strict=True)]
    elif kind == "self_consistency":
        verdicts = _judge_majority(
            rows["prompt_id"].cast(pl.String).to_list(),
            completions,
            settings.min_votes,
            settings.min_agreement,
        )
    elif kind == "reward_model":
        verdicts = _judge_reward(settings, prompts, completions, batch_size)
    else:
        raise ValueError(f"unknown acceptance verifier kind {kind!r}")
    return _attach(rows, verdicts)


def _attach(rows: pl.DataFrame, verdicts: list[Verdict]) -> pl.DataFrame:
    columns = list(zip(*verdicts, strict=True)) if verdicts else [[], [], [], []]
    return rows.with_columns(
        pl.Series(name, list(values), dtype=dtype)
        for (name, dtype), values in zip(JUDGE_COLUMNS.items(), columns, strict=True)
    )


def _judge_reward(
    settings: VerifierSettings, prompts: list[str], completions: list[str], batch_size: int
) -> list[Verdict]:
    from flywheel.loop.reward import reward_scores  # torch + transformers: only for this kind

    if settings.reward_model is None:
        raise ValueError("verifier kind reward_model needs reward_model (a model directory)")
    scores = reward_scores(settings.reward_model, prompts, completions, batch_size)
    verdicts: list[Verdict] = []
    for score, completion in zip(scores, completions, strict=True):
        ok = score >= settings.threshold
        verdicts.append((ok, None if ok else "below_reward_threshold", completion.strip(), score))
    return verdicts


def _judge_reference(kind: str, completion: str, answer: str | None) -> Verdict:
    if answer is None:
        return False, "no_reference", completion.strip(), None
    try:
        ok = verify(kind, completion, answer)
    except ValueError as exc:  # e.g. numeric with an answer that is not a number
        return False, f"verifier_error: {exc}", completion.strip(), None
    return ok, None if ok else "incorrect", completion.strip(), None


def load_function(path: str) -> Callable[..., Any]:
    """The callable named by ``package.module:function``; errors name the path and the cause."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"verifier function {path!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"verifier function {path!r}: cannot import {module_name!r}: {exc}"
        ) from exc
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ImportError(f"verifier function {path!r}: {module_name!r} has no {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise TypeError(f"verifier function {path!r} is a {type(fn).__name__}, not callable")
    return fn


def _judge_call(
    fn: Callable[..., Any], prompt: str, completion: str, answer: str | None
) -> Verdict:
    """One call of a user verifier; whatever it raises rejects this row, not the whole run."""
    response = completion.strip()
    try:
        result = fn(prompt, completion, answer)
    except Exception as exc:  # noqa: BLE001 - user code: any failure is this row's reason
        return False, f"verifier_error: {type(exc).__name__}: {exc}", response, None
    ok, why = result if isinstance(result, tuple) and len(result) == 2 else (result, None)
    # `in (True, False)` admits numpy bools and rejects a truthy string such as "False".
    if isinstance(ok, str) or ok not in (True, False):
        return False, f"verifier_error: returned {result!r}, not a bool", response, None
    if ok:
        return True, None, response, None
    return False, str(why) if why else "incorrect", response, None


def vote_key(completion: str) -> tuple[str, Any]:
    """What a sample votes for: the number it is, when it is one number, else its stripped
    text. So "19", " 19.0" and "19\\n" agree; "The answer is 19" is a different text."""
    text = completion.strip()
    number = parse_number(text)
    return ("number", number) if number is not None else ("text", text)


def _judge_majority(
    prompt_ids: list[str | None], completions: list[str], min_votes: int, min_agreement: float
) -> list[Verdict]:
    """Self-consistency (Wang et al. 2022): per prompt, the answer most samples agree on wins
    if it has >= ``min_votes`` votes and >= ``min_agreement`` of the prompt's samples; a tie
    for the top is no majority. Winners get the majority answer (its most common written
    form) as response; the others are ``not_majority``, or ``no_majority`` without a winner."""
    groups: dict[str | None, list[int]] = {}
    for i, pid in enumerate(prompt_ids):
        groups.setdefault(pid, []).append(i)
    keys = [vote_key(c) for c in completions]
    out: list[Verdict | None] = [None] * len(completions)
    for members in groups.values():
        votes = Counter(keys[i] for i in members).most_common()
        top, count = votes[0]
        share = count / len(members)
        tied = len(votes) > 1 and votes[1][1] == count
        if tied or count < min_votes or share < min_agreement:
            for i in members:
                out[i] = (False, "no_majority", completions[i].strip(), share)
            continue
        forms = Counter(completions[i].strip() for i in members if keys[i] == top)
        answer = forms.most_common(1)[0][0]  # ties: the form seen first (Counter keeps order)
        for i in members:
            won = keys[i] == top
            out[i] = (
                won,
                None if won else "not_majority",
                answer if won else completions[i].strip(),
                share,
            )
    return [v for v in out if v is not None]

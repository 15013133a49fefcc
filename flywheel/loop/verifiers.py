"""Verifiers: decide whether a model's completion answers a problem correctly.

    python -c "from flywheel.loop.verifiers import verify as v; print(v('numeric', 'It is 19.',
    '19'))"

One setting (``flywheel.core.settings.verifier.VerifierSettings``: ``acceptance.verifier`` and
every ``eval.tasks[].verifier``) and one scoring path: ``score`` judges one completion, ``judge``
a frame of them (acceptance, GRPO rewards, and eval through ``score_rows``), so a completion
counts as correct in exactly one way everywhere. Per-row kinds:

- ``exact``: the completion, stripped, equals the answer, stripped.
- ``numeric``: the first number in the completion equals the answer as a number
  ("The answer is 19." and "19.0" both match "19"; "1,234" reads as 1234).
- ``contains``: the answer (stripped) occurs in the completion.
- ``regex``: ``pattern`` with ``{answer}`` replaced by the escaped answer matches somewhere
  in the completion (e.g. ``"answer: {answer}\\b"``).
- any name added with ``register_verifier(name, fn)``, ``fn(completion, answer, pattern) ->
  bool`` (e.g. from a module the spec lists under ``plugins``, see ``flywheel.loop.plugins``).
  These judge against the row's reference ``answer``: a row without one is ``no_reference``.
- ``python``: ``fn(prompt, completion, answer) -> bool | (bool, reason)`` imported from
  ``package.module:function``; the answer may be None.

A wrong answer is rejected ``incorrect`` (or the python function's reason); a verifier that
raises rejects its row ``verifier_error: <exc>``, not the whole run. ``judge`` also has two
kinds that need more than one completion or a model:

- ``self_consistency``: majority vote across one prompt's samples, for prompts without a
  reference (see ``_judge_majority``); acceptance only, eval scores one greedy answer.
- ``reward_model``: a local sequence-classification model's score >= threshold
  (``flywheel.loop.reward``; torch is imported only for this kind).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import polars as pl

from flywheel.core.settings.verifier import BUILTIN_KINDS, JUDGE_KINDS
from flywheel.loop.plugins import load_function

if TYPE_CHECKING:  # the settings model is only read here; importing it at runtime is not needed
    from flywheel.core.settings.verifier import VerifierSettings

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
    if name in JUDGE_KINDS:  # judge handles these itself: a function by that name is never used
        raise ValueError(f"verifier {name!r} is a built-in kind of judge; choose another name")
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


def known_kinds() -> list[str]:
    """Every verifier kind a spec may name now: the built-in ones and those registered."""
    return sorted({*VERIFIERS, *JUDGE_KINDS})


def unknown_kind(kind: str) -> str:
    """Why ``kind`` cannot be used, and how to add it."""
    return (
        f"unknown verifier kind {kind!r}; known: {', '.join(known_kinds())}. Add one with a "
        f"module listed under `plugins` that calls register_verifier({kind!r}, fn), or use "
        "kind: python with function: 'module:function'"
    )


# -- scoring one completion: the one notion of correct -------------------------------------
# (correct, reason when not): reason is "incorrect", "no_reference", "verifier_error: ..." or
# the reason a python verifier returned.
Score = tuple[bool, str | None]
Scorer = Callable[[str, str, str | None], Score]


def scorer(settings: VerifierSettings) -> Scorer:
    """``(prompt, completion, answer) -> (correct, reason)`` for a per-row kind; the python
    function is imported once, here. self_consistency and reward_model are ``judge``'s."""
    if settings.kind == "python":
        fn = load_function(settings.function or "")
        return lambda prompt, completion, answer: _call(fn, prompt, completion, answer)
    if settings.kind in JUDGE_KINDS:
        raise ValueError(f"verifier kind {settings.kind!r} does not judge one completion alone")
    if settings.kind not in VERIFIERS:
        raise ValueError(unknown_kind(settings.kind))
    check, pattern = VERIFIERS[settings.kind], settings.pattern
    # A registered function is user code: anything it raises is its row's reason. A built-in
    # one raises ValueError for input it cannot judge; any other exception is a bug here.
    expected = ValueError if settings.kind in BUILTIN_KINDS else Exception
    return lambda prompt, completion, answer: _against(check, completion, answer, pattern, expected)


def score(settings: VerifierSettings, prompt: str, completion: str, answer: str | None) -> Score:
    """Whether ``completion`` answers ``prompt`` correctly (reference ``answer``, or None) by
    the verifier ``settings``, and why not."""
    return scorer(settings)(prompt, completion, answer)


def _against(
    check: Verifier,
    completion: str,
    answer: str | None,
    pattern: str | None,
    expected: type[Exception],
) -> Score:
    if answer is None:
        return False, "no_reference"
    try:
        ok = bool(check(completion, answer, pattern))
    except expected as exc:  # e.g. numeric with an answer that is not a number
        why = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        return False, f"verifier_error: {why}"
    return ok, None if ok else "incorrect"


def _call(fn: Callable[..., Any], prompt: str, completion: str, answer: str | None) -> Score:
    """One call of a user verifier; whatever it raises rejects this row, not the whole run."""
    try:
        result = fn(prompt, completion, answer)
    except Exception as exc:  # noqa: BLE001 - user code: any failure is this row's reason
        return False, f"verifier_error: {type(exc).__name__}: {exc}"
    ok, why = result if isinstance(result, tuple) and len(result) == 2 else (result, None)
    # `in (True, False)` admits numpy bools and rejects a truthy string such as "False".
    if isinstance(ok, str) or ok not in (True, False):
        return False, f"verifier_error: returned {result!r}, not a bool"
    if ok:
        return True, None
    return False, str(why) if why else "incorrect"


# -- judging a frame of generations: acceptance, rewards, eval -----------------------------
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
    if settings.kind == "self_consistency":
        verdicts = _judge_majority(
            rows["prompt_id"].cast(pl.String).to_list(),
            completions,
            settings.min_votes,
            settings.min_agreement,
        )
    elif settings.kind == "reward_model":
        verdicts = _judge_reward(settings, prompts, completions, batch_size)
    else:
        check = scorer(settings)
        answers = rows["answer"].cast(pl.String).to_list()
        verdicts = [
            (*check(p, c, a), c.strip(), None)
            for p, c, a in zip(prompts, completions, answers, strict=True)
        ]
    return _attach(rows, verdicts)


def score_rows(
    settings: VerifierSettings,
    prompts: list[str],
    completions: list[str],
    answers: list[str | None],
    batch_size: int = 16,
) -> list[Score]:
    """(correct, reason) of each completion, by ``judge``: eval's scoring of greedy answers."""
    if settings.kind == "self_consistency":
        raise ValueError("verifier self_consistency votes across samples; it cannot score eval")
    rows = pl.DataFrame(
        {"prompt": prompts, "completion": completions, "answer": answers},
        schema={"prompt": pl.String, "completion": pl.String, "answer": pl.String},
    )
    judged = judge(settings, rows, batch_size)
    return list(zip(judged["verified"].to_list(), judged["reason"].to_list(), strict=True))


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
    for reward, completion in zip(scores, completions, strict=True):
        ok = reward >= settings.threshold
        verdicts.append((ok, None if ok else "below_reward_threshold", completion.strip(), reward))
    return verdicts


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

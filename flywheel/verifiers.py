"""Verifiers: decide whether a model's completion answers a problem correctly.

    python -c "from flywheel.verifiers import verify; print(verify('numeric', 'It is 19.', '19'))"

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
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

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

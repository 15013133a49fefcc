"""Verifiers: each built-in accepts what it should and nothing else; registration rules."""

from __future__ import annotations

import pytest

from flywheel.verifiers import (
    VERIFIERS,
    first_number,
    parse_number,
    register_verifier,
    verify,
)


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("19", "19", True),
        ("  19\n", "19 ", True),
        ("19.", "19", False),
        ("The answer is 19", "19", False),
    ],
)
def test_exact_compares_stripped_text(completion: str, answer: str, expected: bool) -> None:
    assert verify("exact", completion, answer) is expected


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("19", "19", True),
        ("The answer is 19.", "19", True),
        ("19.0", "19", True),
        ("-3 is the result", "-3", True),
        ("it is 1,234 apples", "1234", True),
        ("0.3", "0.30000000000000004", True),  # 0.1 + 0.2 in floating point
        ("12 then 19", "19", False),  # the first number decides, not any number
        ("no digits here", "19", False),
        ("", "19", False),
        ("190", "19", False),
    ],
)
def test_numeric_takes_the_first_number(completion: str, answer: str, expected: bool) -> None:
    assert verify("numeric", completion, answer) is expected


def test_numeric_refuses_an_answer_that_is_not_a_number() -> None:
    with pytest.raises(ValueError, match="not a number"):
        verify("numeric", "19", "nineteen")


def test_number_parsing() -> None:
    assert parse_number(" 42 ") == 42.0
    assert parse_number("4 2") is None
    assert first_number("x=-7, y=3") == -7.0
    assert first_number("7-3") == 7.0


def test_contains_and_regex() -> None:
    assert verify("contains", "so the capital is Paris.", "Paris")
    assert not verify("contains", "so the capital is paris.", "Paris")
    pattern = r"answer:\s*{answer}\b"
    assert verify("regex", "work... answer: 19", "19", pattern)
    assert not verify("regex", "work... answer: 190", "19", pattern)
    # The answer is escaped: "1+1" is literal text, not "one or more 1s".
    assert verify("regex", "answer: 1+1", "1+1", pattern)
    assert not verify("regex", "answer: 11", "1+1", pattern)
    # Braces in the pattern itself are regex syntax, not format fields.
    assert verify("regex", "code 123: 19", "19", r"\d{3}: {answer}")
    with pytest.raises(ValueError, match="pattern"):
        verify("regex", "19", "19")


def test_register_and_unknown() -> None:
    def always(completion: str, answer: str, pattern: str | None = None) -> bool:
        return True

    register_verifier("test_always", always)
    try:
        assert verify("test_always", "anything", "else")
        with pytest.raises(ValueError, match="already registered"):
            register_verifier("test_always", always)
        register_verifier("test_always", lambda c, a, p=None: False, replace=True)
        assert not verify("test_always", "anything", "else")
    finally:
        VERIFIERS.pop("test_always", None)
    with pytest.raises(KeyError, match="registered: contains, exact, numeric, regex"):
        verify("nope", "1", "1")

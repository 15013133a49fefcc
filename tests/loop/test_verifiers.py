"""Verifiers: each built-in accepts what it should and nothing else; registration rules;
``judge`` with every acceptance verifier kind, a tiny real reward model included."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from flywheel.core.settings.loop import VerifierSettings
from flywheel.loop.reward import load_reward_model, render, reward_scores
from flywheel.loop.verifiers import (
    VERIFIERS,
    first_number,
    judge,
    load_function,
    parse_number,
    register_verifier,
    score,
    score_rows,
    scorer,
    verify,
    vote_key,
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


# -- score: one completion, the way eval and acceptance both judge it ---------------------
def test_score_judges_one_completion_with_every_per_row_kind() -> None:
    V = VerifierSettings
    assert score(V(kind="exact"), "q", " 19\n", "19") == (True, None)
    assert score(V(kind="numeric"), "q", "It is 20.", "19") == (False, "incorrect")
    assert score(V(kind="contains"), "q", "so 19 it is", "19") == (True, None)
    assert score(V(kind="regex", pattern="= {answer}$"), "q", "x = 19", "19") == (True, None)
    assert score(V(kind="regex", pattern="= {answer}$"), "q", "x = 19.", "19")[1] == "incorrect"
    assert score(V(kind="exact"), "q", "19", None) == (False, "no_reference")
    ok, why = score(V(kind="numeric"), "q", "19", "nineteen")
    assert not ok and why.startswith("verifier_error: ") and "not a number" in why
    assert score(V(kind="regex"), "q", "19", "19") == (
        False,
        "verifier_error: regex verifier needs a pattern (e.g. 'answer: {answer}\\b')",
    )
    python = V(kind="python", function=f"{__name__}:with_reason")
    assert score(python, "q", "nope", None) == (False, "does not start with ok")
    assert score(python, "q", "ok", None) == (True, None)


def test_a_registered_kind_scores_like_a_built_in() -> None:
    def last_word(completion: str, answer: str, pattern: str | None = None) -> bool:
        return completion.split()[-1] == answer

    register_verifier("test_last_word", last_word)
    try:
        settings = VerifierSettings(kind="test_last_word")
        assert score(settings, "q", "the answer is 7", "7") == (True, None)
        assert score(settings, "q", "7 is not it", "7") == (False, "incorrect")
        # Its own failure is the row's reason, as a python verifier's is.
        assert score(settings, "q", "", "7") == (
            False,
            "verifier_error: IndexError: list index out of range",
        )
        out = judge(settings, _rows(["a", "b"], ["so 7", "8"], ["7", "7"]))
        assert _verdicts(out) == [(True, None, "so 7"), (False, "incorrect", "8")]
    finally:
        VERIFIERS.pop("test_last_word", None)


def test_unknown_kinds_and_kinds_that_need_more_than_one_answer() -> None:
    unknown = VerifierSettings(kind="nope")
    how = r"unknown verifier kind 'nope'; known: contains, exact, .*plugins.*kind: python"
    with pytest.raises(ValueError, match=how):
        score(unknown, "q", "1", "1")
    with pytest.raises(ValueError, match=how):
        judge(unknown, _rows(["a"], ["1"], ["1"]))
    with pytest.raises(ValueError, match="does not judge one completion alone"):
        scorer(VerifierSettings(kind="self_consistency"))
    with pytest.raises(ValueError, match="cannot score eval"):
        score_rows(VerifierSettings(kind="self_consistency"), ["q"], ["1"], ["1"])
    with pytest.raises(ValueError, match="built-in kind of judge"):
        register_verifier("python", lambda c, a, p=None: True)
    assert score_rows(
        VerifierSettings(kind="numeric"),
        ["a", "b", "c"],
        ["19", "x", "4"],
        [
            "19",
            "7",
            None,
        ],
    ) == [(True, None), (False, "incorrect"), (False, "no_reference")]


# -- judge: the acceptance verifiers over a frame of generations --------------------------
def _rows(prompt_ids: list[str], completions: list[str], answers: list[str | None] | None = None):
    n = len(completions)
    return pl.DataFrame(
        {
            "prompt_id": prompt_ids,
            "prompt": [f"question {p}" for p in prompt_ids],
            "completion": completions,
            "answer": answers if answers is not None else [None] * n,
        },
        schema={
            "prompt_id": pl.String,
            "prompt": pl.String,
            "completion": pl.String,
            "answer": pl.String,
        },
    )


def _verdicts(out: pl.DataFrame) -> list[tuple]:
    return list(out.select("verified", "reason", "response").iter_rows())


def test_judge_exact_and_numeric_against_the_reference() -> None:
    rows = _rows(
        ["a", "b", "c", "d"], [" 19\n", "The answer is 7.", "20", "5"], ["19", "7", "19", None]
    )
    exact = judge(VerifierSettings(kind="exact"), rows)
    assert exact.columns == [*rows.columns, "verified", "reason", "response", "score"]
    assert _verdicts(exact) == [
        (True, None, "19"),
        (False, "incorrect", "The answer is 7."),
        (False, "incorrect", "20"),
        (False, "no_reference", "5"),
    ]
    assert exact["score"].null_count() == 4
    numeric = judge(VerifierSettings(kind="numeric"), rows)
    assert numeric["verified"].to_list() == [True, True, False, False]
    # An answer the numeric verifier cannot read rejects its row, it does not stop the run.
    bad = judge(VerifierSettings(kind="numeric"), _rows(["a"], ["19"], ["nineteen"]))
    assert bad["reason"][0].startswith("verifier_error: ") and "not a number" in bad["reason"][0]


# Python verifiers for the tests below, imported by path as a spec would name them.
def last_digit_even(prompt: str, completion: str, answer: str | None) -> bool:
    return int(completion.strip()[-1]) % 2 == 0


def with_reason(prompt: str, completion: str, answer: str | None) -> tuple[bool, str]:
    return (completion.startswith("ok"), "does not start with ok")


def returns_text(prompt: str, completion: str, answer: str | None) -> str:
    return "False"


NOT_CALLABLE = 3


def test_judge_python_function_by_import_path() -> None:
    rows = _rows(["a", "a", "b"], ["12", "13", "x"])
    out = judge(VerifierSettings(kind="python", function=f"{__name__}:last_digit_even"), rows)
    verdicts = _verdicts(out)
    assert verdicts[:2] == [(True, None, "12"), (False, "incorrect", "13")]
    # "x" makes int() raise: that row is rejected with the exception, the others stand.
    assert verdicts[2][0] is False
    assert (
        verdicts[2][1] == "verifier_error: ValueError: invalid literal for int() with base 10: 'x'"
    )
    out = judge(
        VerifierSettings(kind="python", function=f"{__name__}:with_reason"),
        _rows(["a", "b"], ["ok fine", "nope"]),
    )
    assert _verdicts(out) == [(True, None, "ok fine"), (False, "does not start with ok", "nope")]
    # A truthy non-bool is not silently taken as a yes.
    out = judge(
        VerifierSettings(kind="python", function=f"{__name__}:returns_text"), _rows(["a"], ["1"])
    )
    assert out["reason"][0] == "verifier_error: returned 'False', not a bool"


@pytest.mark.parametrize(
    ("path", "error", "match"),
    [
        ("no_colon_here", ValueError, "must look like 'package.module:function'"),
        ("flywheel.no_such_module:fn", ImportError, "cannot import 'flywheel.no_such_module'"),
        (f"{__name__}:missing_fn", ImportError, "has no 'missing_fn'"),
        (f"{__name__}:NOT_CALLABLE", TypeError, "not callable"),
    ],
)
def test_load_function_errors_name_the_path(path: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match) as info:
        load_function(path)
    assert path in str(info.value)


def test_judge_self_consistency_majority_vote() -> None:
    settings = VerifierSettings(kind="self_consistency", min_votes=2, min_agreement=0.5)
    rows = _rows(
        ["a"] * 4 + ["b"] * 4 + ["c"] * 3 + ["d"] * 2,
        # a: 19 (as "19", " 19.0", "19\n") wins 3 of 4; b: a 2-2 tie; c: all different;
        # d: text answers, 2 of 2 agree.
        ["19", " 19.0", "19\n", "18", "1", "1", "2", "2", "x", "y", "z", "Paris", "Paris "],
    )
    out = judge(settings, rows)
    assert _verdicts(out) == [
        (True, None, "19"),
        (True, None, "19"),
        (True, None, "19"),
        (False, "not_majority", "18"),
        *[(False, "no_majority", t) for t in ["1", "1", "2", "2", "x", "y", "z"]],
        (True, None, "Paris"),
        (True, None, "Paris"),
    ]
    assert out["score"].to_list()[:4] == [0.75] * 4  # the majority's share of the samples
    # Stricter thresholds: 3 of 4 is below 0.8 agreement; 2 votes are below min_votes 3.
    strict = judge(VerifierSettings(kind="self_consistency", min_agreement=0.8), rows)
    assert strict["reason"].to_list()[:4] == ["no_majority"] * 4
    votes = judge(VerifierSettings(kind="self_consistency", min_votes=3), rows)
    assert votes["reason"].to_list()[-2:] == ["no_majority"] * 2
    assert vote_key("19.0") == vote_key(" 19 ") != vote_key("The answer is 19")


def test_judge_needs_its_columns() -> None:
    with pytest.raises(ValueError, match=r"needs columns \['prompt_id'\]"):
        judge(VerifierSettings(kind="self_consistency"), _rows(["a"], ["1"]).drop("prompt_id"))


# -- reward model: a tiny Llama sequence classifier built from a config -------------------
def build_reward_model(out_dir: Path, num_labels: int = 1) -> Path:
    """A random-init 1-layer Llama reward head with a BPE tokenizer trained on prose."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from flywheel.train.tokenizer import train_tokenizer
    from tests.conftest import prose

    tok = train_tokenizer(prose(8), vocab_size=300, min_frequency=2, out_dir=out_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        num_labels=num_labels,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_reward_model(tmp_path_factory.mktemp("reward"))


def own_scores(path: Path, prompts: list[str], completions: list[str]) -> list[float]:
    """Each pair scored alone (no padding): the model's own reward for it."""
    import torch

    model, tok = load_reward_model(path)
    out = []
    with torch.inference_mode():
        for p, c in zip(prompts, completions, strict=True):
            ids = tok(render(tok, p, c), return_tensors="pt", add_special_tokens=False)
            out.append(float(model(**ids).logits[0, 0]))
    return out


def test_judge_reward_model_accepts_at_or_above_threshold(reward_model: Path) -> None:
    completions = [
        "19",
        "The answer is nineteen.",
        "twenty",
        "It is 19, because 12 + 7 = 19.",
        "no idea",
        "19 19 19 19",
        "x",
    ]
    rows = _rows([str(i) for i in range(len(completions))], completions)
    rendered = render(load_reward_model(reward_model)[1], "question 0", "19")
    assert rendered.startswith("<|im_start|>user\nquestion 0<|im_end|>\n")
    assert rendered.endswith("<|im_start|>assistant\n19<|im_end|>\n")
    scores = own_scores(reward_model, rows["prompt"].to_list(), completions)
    assert len(set(scores)) == len(scores)  # distinct, so a threshold splits them cleanly
    ranked = sorted(scores)
    threshold = (ranked[3] + ranked[4]) / 2  # three above, four below
    settings = VerifierSettings(kind="reward_model", reward_model=reward_model, threshold=threshold)
    # Batches of 3 pad shorter pairs: pooling the last real token keeps each score its own.
    out = judge(settings, rows, batch_size=3)
    assert out["score"].to_list() == pytest.approx(scores, abs=1e-5)
    expected = [s >= threshold for s in scores]
    assert out["verified"].to_list() == expected and sum(expected) == 3
    assert out["reason"].to_list() == [None if e else "below_reward_threshold" for e in expected]
    # Eval scores a reward_model task through the same judge.
    answers = [None] * len(completions)
    eval_rows = score_rows(settings, rows["prompt"].to_list(), completions, answers, 3)
    assert eval_rows == list(zip(out["verified"], out["reason"], strict=True))


def test_reward_model_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no reward model at"):
        reward_scores(tmp_path / "missing", ["p"], ["c"])
    two = build_reward_model(tmp_path / "two", num_labels=2)
    with pytest.raises(ValueError, match="num_labels=2"):
        reward_scores(two, ["p"], ["c"])

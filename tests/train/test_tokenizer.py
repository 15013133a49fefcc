"""Byte-level BPE: exact round trips, single-id specials, the ChatML assistant mask, publishing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from flywheel.core import products as P
from flywheel.core.artifacts import ArtifactError
from flywheel.core.shards import read_current
from flywheel.core.spec import Spec, SpecError, load_spec
from flywheel.data import stages as pipeline
from flywheel.train.tokenizer import (
    CHAT_TEMPLATE,
    EOS,
    IM_END,
    IM_START,
    PAD,
    SPECIAL_TOKENS,
    TOOL_TAGS,
    build_tokenizer,
    load_tokenizer,
    train_tokenizer,
)

from .conftest import prose

VOCAB = 500
UNICODE = (
    "Ünïcödé — naïve café, 日本語のテキスト, emoji 🚀🧪, Ελληνικά, עברית.\n"
    "\tTabs,  double  spaces , trailing space \r\nand a lone surrogate-free ending ."
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerFast:
    return train_tokenizer(prose(30), VOCAB, 2, tmp_path_factory.mktemp("tok"))


def _materialized(small_spec: Path, *overrides: str) -> Spec:
    spec = load_spec(small_spec, [f"tokenizer.vocab_size={VOCAB}", *overrides])
    pipeline.run_ingest(spec, "corpus")
    pipeline.run_filters(spec, P.resolve_inputs(spec, P.FILTERED))
    pipeline.run_dedup(spec, P.resolve_inputs(spec, P.DEDUPLICATED))
    return spec


def test_round_trip_is_exact_on_unicode(tok: PreTrainedTokenizerFast) -> None:
    for text in [UNICODE, *prose(3), " leading space", "", "\n\n\n"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    # Bytes never seen in training still encode (the whole byte alphabet is in the vocab).
    assert tok.unk_token_id is None
    assert len(tok) == VOCAB + len(TOOL_TAGS)  # the tool-call tags are added after training


def test_special_tokens_are_single_ids(tok: PreTrainedTokenizerFast) -> None:
    assert tok.eos_token == tok.bos_token == EOS and tok.pad_token == PAD
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS.values()}
    assert ids == {EOS: 0, PAD: 1, IM_START: 2, IM_END: 3}
    for token, i in ids.items():
        assert tok.encode(token, add_special_tokens=False) == [i]
    # No special token is added around plain text.
    assert tok.encode("hello", add_special_tokens=True) == tok.encode(
        "hello", add_special_tokens=False
    )


def test_chat_template_masks_exactly_the_assistant_turns(tok: PreTrainedTokenizerFast) -> None:
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 30+12?"},
        {"role": "assistant", "content": "It is 42."},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nAnd 30+12?<|im_end|>\n"
        "<|im_start|>assistant\nIt is 42.<|im_end|>\n"
    )
    out = tok.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    assert tok.decode(ids) == text
    # The masked tokens, in runs, are exactly each assistant content plus its <|im_end|>.
    runs, current = [], []
    for i, m in zip(ids, mask, strict=True):
        if m:
            current.append(i)
        elif current:
            runs.append(tok.decode(current))
            current = []
    assert runs == ["4<|im_end|>", "It is 42.<|im_end|>"]


def test_generation_prompt_opens_an_assistant_turn(tok: PreTrainedTokenizerFast) -> None:
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_training_is_deterministic(tmp_path: Path) -> None:
    a = train_tokenizer(prose(20), 400, 2, tmp_path / "a")
    b = train_tokenizer(iter(prose(20)), 400, 2, tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()
    assert a.encode(UNICODE) == b.encode(UNICODE)


def test_load_round_trips_and_sets_a_missing_pad(tok: PreTrainedTokenizerFast, tmp_path: Path):
    tok.save_pretrained(tmp_path / "saved")
    loaded = load_tokenizer(tmp_path / "saved")
    assert loaded.chat_template == CHAT_TEMPLATE and loaded.pad_token == PAD
    assert loaded.encode(UNICODE) == tok.encode(UNICODE)

    no_pad = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tok.backend_tokenizer.to_str()), eos_token=EOS
    )
    no_pad.save_pretrained(tmp_path / "no_pad")
    assert load_tokenizer(tmp_path / "no_pad").pad_token == EOS


def test_load_missing_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        load_tokenizer(tmp_path / "nowhere")


def test_build_trains_publishes_and_is_idempotent(small_spec: Path) -> None:
    spec = _materialized(small_spec)
    first = build_tokenizer(spec, P.resolve_inputs(spec, P.TOKENIZER))
    dedup = read_current(spec.product_dir(pipeline.DEDUPLICATED))
    assert first.meta["source"] == "trained"
    assert first.meta["input_version"] == dedup.version
    assert first.meta["docs"] == dedup.num_rows
    assert first.meta["vocab_size"] == VOCAB + len(TOOL_TAGS)
    assert first.meta["spec_fingerprint"] == spec.fingerprint()
    assert load_tokenizer(first.path).decode(load_tokenizer(first.path).encode(UNICODE)) == UNICODE

    again = build_tokenizer(spec, P.resolve_inputs(spec, P.TOKENIZER))
    assert again.version == first.version  # nothing changed: no retraining
    capped = load_spec(small_spec, [f"tokenizer.vocab_size={VOCAB}", "tokenizer.max_docs=3"])
    second = build_tokenizer(capped, P.resolve_inputs(capped, P.TOKENIZER))
    assert second.version != first.version and second.meta["docs"] == 3


def test_build_from_a_local_path(small_spec: Path, tmp_path: Path) -> None:
    spec = _materialized(small_spec)
    trained = build_tokenizer(spec, P.resolve_inputs(spec, P.TOKENIZER))
    local = load_spec(small_spec, [f"tokenizer.path={trained.path}"])
    copied = build_tokenizer(local, P.resolve_inputs(local, P.TOKENIZER))
    assert copied.meta["source"] == str(trained.path)
    assert load_tokenizer(copied.path).encode(UNICODE) == load_tokenizer(trained.path).encode(
        UNICODE
    )
    assert build_tokenizer(local, P.resolve_inputs(local, P.TOKENIZER)).version == copied.version

    missing = load_spec(small_spec, [f"tokenizer.path={tmp_path / 'absent'}"])
    with pytest.raises(FileNotFoundError, match="absent"):
        build_tokenizer(missing, P.resolve_inputs(missing, P.TOKENIZER))


def test_build_without_shards_says_to_materialize(small_spec: Path) -> None:
    spec = load_spec(small_spec)
    with pytest.raises((FileNotFoundError, ArtifactError), match="deduplicated_shards"):
        build_tokenizer(spec, P.resolve_inputs(spec, P.TOKENIZER))


def test_digits_are_one_token_each(tmp_path) -> None:
    from flywheel.train.tokenizer import train_tokenizer
    from tests.conftest import prose

    texts = [*prose(20), "In 2024 there were 1000 and 12345 items. " * 50]
    tok = train_tokenizer(texts, 400, 2, tmp_path)
    pieces = tok.tokenize("32100+54000=861000")
    assert "".join(pieces) == "32100+54000=861000"
    assert all(len(p) == 1 for p in pieces)  # no merged digit strings like "00" or "2024"
    assert tok.decode(tok.encode("sum 12345 ok")) == "sum 12345 ok"


def test_tool_call_tags_are_one_token_each_and_survive_decoding(
    tok: PreTrainedTokenizerFast,
) -> None:
    """Byte-level BPE would split each tag into several tokens every agent turn; the added
    (not special) tokens keep them whole, and decoding without special tokens keeps them, so
    the tool-call parser still sees the call in what a policy decodes."""
    text = '<tool_call>\n{"name": "guess", "arguments": {"number": 7}}\n</tool_call>'
    ids = tok.encode(text, add_special_tokens=False)
    assert [tok.convert_tokens_to_ids(t) for t in TOOL_TAGS] == [ids[0], ids[-1]]
    assert tok.decode(ids, skip_special_tokens=True) == text


CALL_PREFIX = '<tool_call>\n{"name": "guess", "arguments": {"number": '
CALL_SUFFIX = "}}\n</tool_call>"


def test_added_tokens_are_one_token_each_longest_first(tmp_path: Path) -> None:
    """``tokenizer.added_tokens``: a listed string is one id wherever it occurs, preferred over
    the shorter ``<tool_call>`` tag it starts with, and decodes back (so a policy's decoded
    turn still parses); the assistant mask still ends on ``<|im_end|>``."""
    tok = train_tokenizer(prose(20), 400, 2, tmp_path, [CALL_PREFIX, CALL_SUFFIX])
    assert len(tok) == 400 + len(TOOL_TAGS) + 2
    text = f"{CALL_PREFIX}17{CALL_SUFFIX}"
    ids = tok.encode(text, add_special_tokens=False)
    digits = tok.convert_tokens_to_ids(["1", "7"])
    assert ids == [
        tok.convert_tokens_to_ids(CALL_PREFIX),
        *digits,
        tok.convert_tokens_to_ids(CALL_SUFFIX),
    ]
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.encode("<tool_call>", add_special_tokens=False) == [
        tok.convert_tokens_to_ids("<tool_call>")
    ]  # the tag alone is still its own token
    messages = [{"role": "user", "content": "go"}, {"role": "assistant", "content": text}]
    out = tok.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    learnt = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert learnt == [*ids, tok.convert_tokens_to_ids(IM_END)]


def test_build_adds_the_spec_added_tokens_to_a_trained_or_local_tokenizer(
    small_spec: Path,
) -> None:
    spec = _materialized(small_spec, f"tokenizer.added_tokens={json.dumps([CALL_SUFFIX])}")
    trained = build_tokenizer(spec, P.resolve_inputs(spec, P.TOKENIZER))
    assert trained.meta["vocab_size"] == VOCAB + len(TOOL_TAGS) + 1
    assert len(load_tokenizer(trained.path).encode(CALL_SUFFIX, add_special_tokens=False)) == 1
    local = load_spec(
        small_spec,
        [f"tokenizer.path={trained.path}", f"tokenizer.added_tokens={json.dumps([CALL_PREFIX])}"],
    )
    copied = load_tokenizer(build_tokenizer(local, P.resolve_inputs(local, P.TOKENIZER)).path)
    assert len(copied) == VOCAB + len(TOOL_TAGS) + 2
    assert len(copied.encode(CALL_PREFIX + CALL_SUFFIX, add_special_tokens=False)) == 2


@pytest.mark.parametrize("bad", [["  "], ["ab", "ab"]])
def test_added_tokens_blank_or_repeated_is_an_error(small_spec: Path, bad: list[str]) -> None:
    with pytest.raises(SpecError, match="added_tokens"):
        load_spec(small_spec, [f"tokenizer.added_tokens={json.dumps(bad)}"])

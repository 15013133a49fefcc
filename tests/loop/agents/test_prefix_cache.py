"""The transformers policy's KV cache between calls, on a tiny random-init Llama: with the
cache it produces what a full prefill of every context produces (``cache=False``), whatever
rows drop out or come new, and its sampling loop matches ``generate``'s greedy decoding and
top-k/top-p truncation."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from flywheel.envs.guess import NumberGuess, Settings, train_episodes
from flywheel.loop.agents.collect import CollectSettings, Context, collect
from flywheel.loop.agents.hf_policy import TransformersPolicy, draw, truncate
from flywheel.loop.agents.prefix_cache import match
from tests.loop.eval.conftest import TINY_LLAMA

pytestmark = pytest.mark.usefixtures("one_thread")
close = torch.testing.assert_close
EASY = Settings(min_n=4, max_n=128, held_out=2)


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    from flywheel.core.settings.train import ModelSettings
    from flywheel.train.model import build_model

    special = {k: getattr(tokenizer, k) for k in ("eos_token_id", "bos_token_id", "pad_token_id")}
    return build_model(ModelSettings(config=TINY_LLAMA), len(tokenizer), 2048, special, seed=2)


def play(policy: TransformersPolicy, tokenizer: Any, count: int = 3, turns: int = 3) -> Any:
    episodes = train_episodes(count, EASY, seed=5)
    settings = CollectSettings(max_turns=turns, samples_per_episode=2)
    return collect(policy, tokenizer, lambda: NumberGuess(EASY), episodes, "guess", None, settings)


def assert_same_steps(cached: list[Any], full: list[Any]) -> None:
    assert [s.token_ids for s in cached] == [s.token_ids for s in full]
    for a, b in zip(cached, full, strict=True):
        close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_cached_collection_equals_full_prefill(
    model: Any, tokenizer: Any, temperature: float
) -> None:
    def policy(cache: bool) -> TransformersPolicy:
        return TransformersPolicy(model, tokenizer, 10, temperature, top_k=50, seed=7, cache=cache)

    cached, full = policy(True), policy(False)
    a, b = play(cached, tokenizer), play(full, tokenizer)
    assert a["completion_ids"].to_list() == b["completion_ids"].to_list()
    for x, y in zip(a["logprobs"].to_list(), b["logprobs"].to_list(), strict=True):
        close(torch.tensor(x), torch.tensor(y), atol=1e-4, rtol=0)
    # without the cache every turn runs the whole context; with it, the openings are run
    # once and each later turn only what the collector appended
    contexts = sum(len(p) for p in b["prompt_ids"].to_list())
    assert full.prefilled > 3 * contexts and cached.prefilled < full.prefilled / 2
    assert a["num_turns"].to_list() == [3] * 6 and cached.calls == 3
    if temperature:  # the same seed draws the same collection again
        again = play(policy(True), tokenizer)
        assert again["completion_ids"].to_list() == a["completion_ids"].to_list()


def grow(context: list[int], step: Any, tail: list[int]) -> Context:
    """The context of the next turn: this one, the model's turn, then ``tail`` (a tool turn)."""
    return Context([], context + step.token_ids + tail)


def test_rows_dropping_out_and_new_contexts_match_full_prefill(model: Any, tokenizer: Any) -> None:
    texts = ["hello there", "a much longer opening with several more words in it", "x y"]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    tool = tokenizer("<|im_start|>tool\nlower<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    cached = TransformersPolicy(model, tokenizer, max_new_tokens=7, temperature=0.0)
    full = TransformersPolicy(model, tokenizer, max_new_tokens=7, temperature=0.0, cache=False)
    first = [Context([], p) for p in prompts]
    steps = cached(first)
    assert_same_steps(steps, full(first))
    assert {s.finish_reason for s in steps} == {"length"}  # the 7th token was never fed
    # row 1 finished; rows 2 and 0 come back in another order with tails of different
    # lengths, next to a new episode and a rewritten row 0 (extends no cached row)
    second = [
        grow(prompts[2], steps[2], tool),
        Context([], prompts[1][:3] + [7, 8]),
        grow(prompts[0], steps[0], tool[:4]),
        Context([], prompts[0][:-1] + [9]),
    ]
    before = cached.prefilled
    assert_same_steps(cached(second), full(second))
    # each extended row feeds its last generated token and its tail; the others, everything
    assert cached.prefilled - before == (1 + len(tool)) + 5 + (1 + 4) + len(prompts[0])
    # a third turn still extends the kept rows (the gathered cache was kept in turn)
    third = [grow(second[2].token_ids, cached([second[2]])[0], tool)]
    full([second[2]])
    assert_same_steps(cached(third), full(third))


def test_greedy_matches_generate_on_left_padded_contexts(model: Any, tokenizer: Any) -> None:
    texts = ["one", "two three four five six", "seven eight"]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    policy = TransformersPolicy(model, tokenizer, max_new_tokens=6, temperature=0.0)
    policy.stops = []  # every row runs all six steps, as generate does without a stop token
    steps = policy([Context([], r) for r in rows])
    ids, mask = policy._left_pad(rows)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=6,
                             min_new_tokens=6, pad_token_id=tokenizer.pad_token_id,
                             return_dict_in_generate=True, output_logits=True)  # fmt: skip
    new = out.sequences[:, ids.shape[1] :]
    assert [s.token_ids for s in steps] == new.tolist()
    logits = torch.stack(out.logits, dim=1).float()
    expected = torch.log_softmax(logits, dim=-1).gather(-1, new[..., None])[..., 0]
    # tight: a token at the wrong rotary position is off by ~1e-3 even in this random model
    close(torch.tensor([s.logprobs for s in steps]), expected, atol=1e-5, rtol=0)


def test_an_in_place_weight_change_drops_the_cache(model: Any, tokenizer: Any) -> None:
    mine = copy.deepcopy(model)
    cached = TransformersPolicy(mine, tokenizer, max_new_tokens=5, temperature=0.0)
    prompt = tokenizer("hello there", add_special_tokens=False)["input_ids"]
    step = cached([Context([], prompt)])[0]
    with torch.no_grad():
        for p in mine.parameters():
            p.mul_(1.5)  # what an optimizer step does: the same tensors, new values
    nxt = [grow(prompt, step, [5, 6])]
    full = TransformersPolicy(mine, tokenizer, max_new_tokens=5, temperature=0.0, cache=False)
    assert_same_steps(cached(nxt), full(nxt))
    assert cached.prefilled == len(prompt) + len(nxt[0].token_ids)


def test_match_finds_extended_rows_in_any_order() -> None:
    cached = [[1, 2], [3, 4, 5], [1, 2, 6]]
    contexts = [[3, 4, 5, 9], [1, 2, 6, 0], [1, 2], [8], [1, 2, 7]]
    # [1, 2] itself extends nothing (a row needs a new token to feed); [1, 2, 7] extends [1, 2]
    assert match(cached, contexts) == [1, 2, None, None, 0]


@pytest.mark.parametrize(("top_k", "top_p"), [(5, 1.0), (0, 0.8), (20, 0.5), (0, 1.0)])
def test_truncate_keeps_what_generate_keeps(top_k: int, top_p: float) -> None:
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(top_k))
    expected = logits
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1:
        expected = TopPLogitsWarper(top_p)(None, expected)
    assert torch.equal(truncate(logits, top_k, top_p).isinf(), expected.isinf())


def test_draw_samples_the_given_probabilities() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.25, 0.0, 0.75]])
    generator = torch.Generator().manual_seed(0)
    drawn = torch.stack([draw(probs, generator) for _ in range(4000)])
    counts = torch.stack([(drawn == i).float().mean(dim=0) for i in range(4)], dim=1)
    close(counts, probs, atol=0.03, rtol=0)  # 4000 draws: a standard error under 0.008
    assert bool((counts[probs == 0] == 0).all())  # never a token of probability 0

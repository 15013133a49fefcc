"""What an agent cycle trains on: accepted trajectories as SFT conversations, and seed
episodes played by a teacher. The loss mask SFT derives from a conversation (the chat
template's assistant span) must be the collector's ``completion_mask``, token by token."""

from __future__ import annotations

import json
import random
from typing import Any

import polars as pl
import pytest

from flywheel.core.chat import sft_record
from flywheel.envs.guess import NumberGuess, Settings, bisection, consistent_guess, train_episodes
from flywheel.loop.agents.collect import CollectSettings, collect, opening
from flywheel.loop.agents.teacher import conversations
from flywheel.loop.agents.trajectories import training_rows
from tests.loop.agents.conftest import Bisection, Scripted

SMALL = Settings(min_n=4, max_n=64, held_out=8, seed=3)
SYSTEM = "Call guess(number) as <tool_call> JSON."


def played(policy: Any, tokenizer: Any, n: int = 6) -> pl.DataFrame:
    settings = CollectSettings(max_turns=8, system_prompt=SYSTEM)
    env = lambda: NumberGuess(SMALL)  # noqa: E731
    episodes = train_episodes(n, SMALL, seed=5)
    return collect(policy, tokenizer, env, episodes, "guess", SMALL.model_dump(), settings)


def test_the_sft_loss_mask_is_the_collectors_mask_token_by_token(tokenizer: Any) -> None:
    frame = played(Bisection(tokenizer), tokenizer)
    rows = training_rows(frame)
    assert rows["generation_id"].to_list() == frame["episode_id"].to_list()
    for traj, messages in zip(frame.iter_rows(named=True), rows["messages"], strict=True):
        rendered = tokenizer.apply_chat_template(
            json.loads(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = rendered["input_ids"], rendered["assistant_masks"]
        want = traj["prompt_ids"] + traj["completion_ids"]
        want_mask = [0] * len(traj["prompt_ids"]) + traj["completion_mask"]
        # SFT's rendering ends with the newline after the last <|im_end|>: template, mask 0
        assert ids[: len(want)] == want
        assert mask[: len(want)] == want_mask
        assert ids[len(want) :] == tokenizer("\n", add_special_tokens=False)["input_ids"]
        assert mask[len(want) :] == [0]
        assert sum(want_mask) > 0 and 0 in traj["completion_mask"]  # tool turns masked


def test_training_rows_end_on_the_models_last_turn_and_parse_as_sft(tokenizer: Any) -> None:
    frame = played(Bisection(tokenizer), tokenizer)
    for messages, response in zip(*training_rows(frame)[["messages", "response"]], strict=True):
        turns = json.loads(messages)
        assert turns[-1] == {"role": "assistant", "content": response}
        assert {t["role"] for t in turns} == {"system", "user", "assistant", "tool"}
        example, reason = sft_record({"messages": turns})
        assert example is not None, reason


def test_a_trajectory_without_a_model_turn_cannot_become_training_data(tokenizer: Any) -> None:
    frame = played(Scripted(tokenizer, ["x"]), tokenizer, n=1).with_columns(
        pl.lit("[]").alias("turns")
    )
    with pytest.raises(ValueError, match="no model turn"):
        training_rows(frame)


def test_teacher_conversations_are_what_the_collector_renders(tokenizer: Any) -> None:
    """The teacher's episodes have the opening and tool turns of a played episode."""
    records = conversations(
        20, 1, "flywheel.envs.guess:NumberGuess", "flywheel.envs.guess:bisection",
        SMALL.model_dump(), SYSTEM, max_turns=8,
    )  # fmt: skip
    assert len(records) == 20
    for record in records:
        turns = record["messages"]
        first = opening(NumberGuess(SMALL), _episode_of(turns), SYSTEM)
        assert turns[: len(first)] == first
        assert turns[-1]["role"] == "assistant"
        assert sft_record(record)[0] is not None
    # bisection solves every episode within the budget: no tool turn says the guesses ran out
    replies = [t["content"] for r in records for t in r["messages"] if t["role"] == "tool"]
    assert replies and not any("no turns left" in r or r == "correct" for r in replies)


def _episode_of(turns: list[dict]) -> dict:
    n = int(turns[1]["content"].split("from 1 to ")[1].split(";")[0])
    return {
        "prompt": [turns[1] | {"content": turns[1]["content"].split("\n")[0]}],
        "n": n,
        "secret": 1,
    }


def test_the_teachers_read_the_replies() -> None:
    env = NumberGuess(SMALL)
    episode = {"prompt": [{"role": "user", "content": "Find it."}], "n": 40, "secret": 29}
    messages = opening(env, episode, SYSTEM)
    for _ in range(6):  # bisection: 20 lower... until correct within the budget
        text = bisection(messages)
        number = json.loads(text.split("\n")[1])["arguments"]["number"]
        messages += [{"role": "assistant", "content": text}]
        messages += [{"role": "tool", "content": env.guess(number)}]
        if env.done:
            break
    assert env.solved
    consistent = [consistent_guess(messages[:4], random.Random(s)) for s in range(30)]
    low, high = (21, 40) if "higher" in messages[3]["content"] else (1, 19)
    numbers = {json.loads(t.split("\n")[1])["arguments"]["number"] for t in consistent}
    assert numbers <= set(range(low, high + 1)) and len(numbers) > 3


def test_rough_bisection_guesses_in_the_middle_half_of_the_feasible_range() -> None:
    from flywheel.envs.guess import rough_bisection

    env = NumberGuess(SMALL)
    episode = {"prompt": [{"role": "user", "content": "Go."}], "n": 64, "secret": 5}
    messages = opening(env, episode, SYSTEM)
    first = {_number(rough_bisection(messages, random.Random(s))) for s in range(40)}
    assert first <= set(range(16, 50)) and len(first) > 5  # [1, 64]'s middle half, spread
    messages += [
        {"role": "assistant", "content": _call(30)},
        {"role": "tool", "content": env.guess(30)},
    ]
    after = {_number(rough_bisection(messages, random.Random(s))) for s in range(40)}
    assert after <= set(range(8, 24))  # "lower than 30": [1, 29]'s middle half


def _call(number: int) -> str:
    from flywheel.loop.agents.toolcalls import format_tool_call

    return format_tool_call("guess", {"number": number})


def _number(text: str) -> int:
    return json.loads(text.split("\n")[1])["arguments"]["number"]


def test_a_repeated_episode_is_played_twice_with_two_ids(tokenizer: Any) -> None:
    """A draw may repeat an episode; each play is its own row (catalog ids are unique)."""
    settings = CollectSettings(max_turns=8, system_prompt=SYSTEM)
    episode = train_episodes(1, SMALL, seed=5)[0]
    frame = collect(
        Bisection(tokenizer), tokenizer, lambda: NumberGuess(SMALL), [episode, episode], "guess",
        SMALL.model_dump(), settings,
    )  # fmt: skip
    assert frame["group_id"].n_unique() == 1 and frame["episode_id"].n_unique() == 2

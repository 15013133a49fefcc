"""The collector on NumberGuess with scripted policies: rewards, the row schema, token
bookkeeping, error observations, episode ends and one policy call per turn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from flywheel.envs.guess import NumberGuess, Settings, held_out_episodes, train_episodes
from flywheel.loop.agents.collect import NO_CALL, CollectSettings, collect
from flywheel.loop.agents.toolcalls import format_tool_call
from flywheel.loop.agents.trajectories import (
    SCHEMA,
    publish_trajectories,
    read_trajectories,
    write_trajectories,
)
from tests.loop.agents.conftest import Bisection, Scripted

SMALL = Settings(min_n=4, max_n=64, held_out=8, seed=3)


def run(policy: Any, tokenizer: Any, episodes: list[dict], **kw: Any) -> pl.DataFrame:
    settings = CollectSettings(**kw)
    env = lambda: NumberGuess(SMALL)  # noqa: E731
    return collect(
        policy,
        tokenizer,
        env,
        episodes,
        "guess",
        SMALL.model_dump(),
        settings,
        checkpoint="v-test",
        cycle=2,
    )


def test_bisection_wins_every_held_out_episode(tokenizer: Any) -> None:
    episodes = held_out_episodes(SMALL)
    policy = Bisection(tokenizer)
    frame = run(policy, tokenizer, episodes)
    assert frame.schema == SCHEMA
    assert frame.height == len(episodes)
    assert frame["reward"].to_list() == [1.0] * len(episodes)
    assert frame["done"].all() and not frame["truncated"].any()
    assert set(frame["end_reason"]) == {"done"} and frame["error"].null_count() == frame.height
    assert frame["cycle"].unique().to_list() == [2] and set(frame["checkpoint"]) == {"v-test"}
    assert frame["episode_id"].n_unique() == frame.height
    for row in frame.iter_rows(named=True):
        assert json.loads(row["episode"])["secret"] in range(1, json.loads(row["episode"])["n"] + 1)
        assert row["step_rewards"] == [0.0] * (row["num_turns"] - 1) + [1.0]
        turns = json.loads(row["turns"])
        assert turns[0]["role"] == "system" and "guess" in turns[0]["content"]
        assert turns[-1] == {**turns[-1], "role": "tool", "name": "guess", "content": "correct"}
        assert sum(t["role"] == "assistant" for t in turns) == row["num_turns"]


def test_tokens_and_mask_are_the_conversation(tokenizer: Any) -> None:
    """prompt + completion decodes to the rendered turns up to the model's last turn; the
    masked-in tokens are exactly the model's turns, each with its stop token."""
    frame = run(Bisection(tokenizer), tokenizer, held_out_episodes(SMALL)[:3])
    for row in frame.iter_rows(named=True):
        ids, mask = row["completion_ids"], row["completion_mask"]
        assert len(ids) == len(mask) and set(mask) == {0, 1} and mask[-1] == 1
        assert row["logprobs"] is None  # the scripted policy reports none
        turns = json.loads(row["turns"])
        last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
        rendered = tokenizer.apply_chat_template(turns[: last + 1], tokenize=False)
        assert tokenizer.decode(row["prompt_ids"] + ids) + "\n" == rendered
        generated = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
        said = [t["content"] + "<|im_end|>" for t in turns if t["role"] == "assistant"]
        assert generated == "".join(said)


def test_a_policy_ignoring_the_replies_is_truncated_with_no_reward(tokenizer: Any) -> None:
    episodes = [e for e in train_episodes(4, SMALL, seed=1) if e["secret"] != 1]
    always_one = Scripted(tokenizer, [format_tool_call("guess", {"number": 1})])
    frame = run(always_one, tokenizer, episodes)
    assert frame["reward"].to_list() == [0.0] * len(episodes)
    assert frame["truncated"].all() and not frame["done"].any()
    assert set(frame["end_reason"]) == {"env_truncated"}  # NumberGuess's own budget ran out
    turns = json.loads(frame["turns"][0])
    assert "already guessed" in turns[5]["content"]  # the repeat spent a turn


def test_malformed_calls_become_error_observations(tokenizer: Any) -> None:
    bad = [
        "<tool_call>{not json}</tool_call>",
        format_tool_call("shout", {"number": 3}),
        format_tool_call("guess", {"num": 3}),
        '<tool_call>["guess", 3]</tool_call>',
        "no call at all",
        '<tool_call>{"name": "guess", "arguments": {"number": 2}',
    ]
    episodes = train_episodes(2, SMALL, seed=5)
    frame = run(Scripted(tokenizer, bad), tokenizer, episodes, max_turns=len(bad))
    assert set(frame["end_reason"]) == {"max_turns"} and frame["truncated"].all()
    assert frame["num_turns"].to_list() == [len(bad)] * 2
    tool_turns = [t["content"] for t in json.loads(frame["turns"][0]) if t["role"] == "tool"]
    assert tool_turns[0].startswith("error: the tool call is not valid JSON")
    assert tool_turns[1].startswith("error: no tool named 'shout'")
    assert tool_turns[2].startswith("error: TypeError")
    assert tool_turns[3].startswith("error: the tool call must be a JSON object")
    assert tool_turns[4] == NO_CALL
    assert "never closed" in tool_turns[5]


def test_one_policy_call_per_turn_with_every_live_episode(tokenizer: Any) -> None:
    episodes = held_out_episodes(SMALL)
    policy = Bisection(tokenizer)
    frame = run(policy, tokenizer, episodes, samples_per_episode=2)
    turns = frame["num_turns"].to_list()
    assert len(policy.calls) == max(turns)
    assert policy.calls == [sum(t > k for t in turns) for k in range(max(turns))]
    assert policy.calls[0] == 2 * len(episodes)
    assert frame["group_id"].n_unique() == len(episodes) and set(frame["sample"]) == {0, 1}


def test_max_turns_and_timeout_end_episodes(tokenizer: Any) -> None:
    episodes = [e for e in held_out_episodes(SMALL) if e["n"] >= 16][:2]
    capped = run(Bisection(tokenizer), tokenizer, episodes, max_turns=1)
    assert set(capped["end_reason"]) == {"max_turns"} and capped["num_turns"].to_list() == [1, 1]
    late = run(Bisection(tokenizer), tokenizer, episodes, episode_timeout_s=0.0)
    assert set(late["end_reason"]) == {"timeout"} and late["truncated"].all()


class Fragile(NumberGuess):
    """Fails to reset for n == 5 and to score for n == 6."""

    def reset(self, n: int, secret: int, **row: Any) -> str:
        if n == 5:
            raise RuntimeError("no episode today")
        return super().reset(n, secret, **row)

    def get_reward(self) -> float:
        if self.n == 6:
            raise ZeroDivisionError("bad scorer")
        return super().get_reward()


def test_an_environment_that_raises_fails_only_its_episode(tokenizer: Any) -> None:
    from flywheel.envs.guess import episode

    episodes = [episode(5, 2), episode(6, 2), episode(7, 2)]
    frame = collect(Bisection(tokenizer), tokenizer, Fragile, episodes, "fragile")
    assert frame["end_reason"].to_list() == ["error", "error", "done"]
    assert frame["error"][0] == "reset raised RuntimeError: no episode today"
    assert frame["error"][1] == "get_reward raised ZeroDivisionError: bad scorer"
    assert frame["reward"].to_list() == [0.0, 0.0, 1.0] and frame["num_turns"][0] == 0


class BadJudge(NumberGuess):
    """Step rewards that are not a list of finite numbers, differently per secret."""

    def guess(self, number: int) -> str:
        reply = super().guess(number)
        if self.secret == 2:
            self.step_rewards[-1] = float("nan")
        elif self.secret == 3:
            self.step_rewards = "oops"
        else:  # numpy's numbers are numbers
            self.step_rewards[-1] = np.float32(self.step_rewards[-1])
        return reply


def test_step_rewards_that_are_not_numbers_fail_only_their_episode(tokenizer: Any) -> None:
    from flywheel.envs.guess import episode

    episodes = [episode(8, 2), episode(8, 3), episode(8, 4)]
    frame = collect(Bisection(tokenizer), tokenizer, BadJudge, episodes, "bad_judge")
    assert frame["end_reason"].to_list() == ["error", "error", "done"]
    assert frame["error"][0] == "step_rewards holds nan, not a finite number"
    assert frame["error"][1] == "step_rewards is a str, not a list of numbers"
    assert frame["error"][2] is None and frame["reward"].to_list() == [0.0, 0.0, 1.0]
    assert frame["step_rewards"].to_list()[:2] == [[0.0], [0.0]]  # ended at its first turn


def test_trajectories_round_trip_through_parquet(tokenizer: Any, tmp_path: Path) -> None:
    frame = run(Bisection(tokenizer), tokenizer, held_out_episodes(SMALL)[:2])
    path = write_trajectories(frame, tmp_path / "t.parquet")
    assert read_trajectories(path).equals(frame)
    rejected = frame.head(1).with_columns(pl.lit("low_reward").alias("reason"))
    published = publish_trajectories(tmp_path / "set", frame, rejected, cycle=2)
    assert published.read().equals(frame) and published.aux_names == ["rejected"]
    with pytest.raises(ValueError, match="no column 'reward'"):
        write_trajectories(frame.drop("reward"), tmp_path / "bad.parquet")


def test_a_policy_returning_the_wrong_number_of_steps_is_an_error(tokenizer: Any) -> None:
    class Short(Bisection):
        def __call__(self, contexts: list) -> list:
            return super().__call__(contexts)[:-1]

    with pytest.raises(ValueError, match="returned 1 steps for 2 contexts"):
        run(Short(tokenizer), tokenizer, held_out_episodes(SMALL)[:2])

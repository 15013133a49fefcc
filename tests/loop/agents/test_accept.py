"""accept_trajectories: every row accepted or rejected with the first reason that applies."""

from __future__ import annotations

from typing import Any

import polars as pl

from flywheel.envs.guess import NumberGuess, held_out_episodes, train_episodes
from flywheel.loop.agents.accept import AcceptSettings, accept_trajectories
from flywheel.loop.agents.collect import CollectSettings, collect
from flywheel.loop.agents.toolcalls import format_tool_call
from tests.loop.agents.conftest import Bisection, Scripted
from tests.loop.agents.test_collect import SMALL


def frames(tokenizer: Any, samples: int = 1) -> tuple[pl.DataFrame, list[dict]]:
    """Bisection on 3 held-out and 3 training episodes, then always-1 on the training ones."""
    held = held_out_episodes(SMALL)[:3]
    train = [e for e in train_episodes(8, SMALL, seed=8) if e["secret"] != 1][:3]
    env, s = (lambda: NumberGuess(SMALL)), CollectSettings(samples_per_episode=samples)
    good = collect(Bisection(tokenizer), tokenizer, env, held + train, "guess", settings=s)
    ones = Scripted(tokenizer, [format_tool_call("guess", {"number": 1})])
    bad = collect(ones, tokenizer, env, train, "guess", settings=s)
    return pl.concat([good, bad]), held


def test_reasons_cover_every_row(tokenizer: Any) -> None:
    frame, held = frames(tokenizer)
    accepted, rejected = accept_trajectories(frame, AcceptSettings(), held)
    assert accepted.height + rejected.height == frame.height
    assert accepted.height == 3 and accepted["reward"].to_list() == [1.0] * 3
    reasons = rejected["reason"].value_counts().sort("reason").rows()
    assert reasons == [("held_out_leak", 3), ("not_completed", 3)]
    # without the completion requirement the failures are still below the reward threshold
    _, rejected = accept_trajectories(frame, AcceptSettings(require_completed=False), held)
    assert sorted(set(rejected["reason"])) == ["held_out_leak", "low_reward"]
    # and with neither, they are accepted: nothing is filtered that was not asked for
    keep_all = AcceptSettings(min_reward=None, require_completed=False)
    accepted, rejected = accept_trajectories(frame, keep_all)
    assert accepted.height == frame.height and rejected.height == 0


def test_duplicates_and_flat_groups(tokenizer: Any) -> None:
    frame, held = frames(tokenizer, samples=2)  # a deterministic policy repeats itself
    accepted, rejected = accept_trajectories(frame, AcceptSettings(), held)
    assert accepted.height == 3 and accepted["group_id"].n_unique() == 3
    assert rejected.filter(pl.col("reason") == "duplicate").height == 3
    grpo = AcceptSettings(min_reward=None, require_completed=False, min_group_std=0.0)
    # a training episode's group holds both policies' samples (rewards 1 and 0): it is kept,
    # one row per distinct trajectory
    accepted, rejected = accept_trajectories(frame, grpo, held)
    assert sorted(accepted["reward"].to_list()) == [0.0] * 3 + [1.0] * 3
    assert rejected["reason"].value_counts().sort("reason").rows() == [
        ("duplicate", 6),
        ("held_out_leak", 6),
    ]
    # the held-out episodes' groups all scored 1.0: nothing for GRPO to learn from them
    _, rejected = accept_trajectories(frame, grpo)
    flat = rejected.filter(pl.col("reason") == "zero_group_variance")
    assert flat.height == 6 and flat["reward"].to_list() == [1.0] * 6


def test_errors_are_rejected_first(tokenizer: Any) -> None:
    frame, _ = frames(tokenizer)
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 0)
        .then(pl.lit("boom"))
        .otherwise(pl.col("error"))
        .alias("error")
    )
    _, rejected = accept_trajectories(frame, AcceptSettings())
    assert rejected.row(0, named=True)["reason"] == "error"


def test_a_solved_episode_with_a_mistake_is_rejected_when_asked(tokenizer: Any) -> None:
    """Always-1, then bisection of what is left: on n=8, secret 5 the second 1 is a repeat
    (step reward -1) before bisection solves it; plain bisection makes no mistake."""
    call = lambda k: format_tool_call("guess", {"number": k})  # noqa: E731
    blunder = Scripted(tokenizer, [call(1), call(1), call(6), call(5)])
    episodes = [{"prompt": [{"role": "user", "content": "Find it."}], "n": 8, "secret": 5}]
    env = lambda: NumberGuess(SMALL)  # noqa: E731
    frame = pl.concat([
        collect(blunder, tokenizer, env, episodes, "guess"),
        collect(Bisection(tokenizer), tokenizer, env, episodes, "guess"),
    ])  # fmt: skip
    assert frame["reward"].to_list() == [1.0, 1.0]
    assert frame["step_rewards"].to_list()[0] == [0.0, -1.0, 0.0, 1.0]
    accepted, _ = accept_trajectories(frame, AcceptSettings())
    assert accepted.height == 2  # off by default
    accepted, rejected = accept_trajectories(frame, AcceptSettings(min_step_reward=0.0))
    assert accepted["step_rewards"].to_list() == [frame["step_rewards"][1].to_list()]
    assert rejected["reason"].to_list() == ["low_step_reward"]

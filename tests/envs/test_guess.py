"""NumberGuess: bisection always wins the held-out set; policies that ignore replies do not.

.venv/bin/python -m pytest -q tests/envs/test_guess.py
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flywheel.envs.guess import NumberGuess, Settings, budget, held_out_episodes, train_episodes

HELD_OUT = held_out_episodes()


def _bisect(env: NumberGuess) -> None:
    low, high = 1, env.n
    while not (env.done or env.truncated):
        mid = (low + high) // 2
        reply = env.guess(mid)
        if reply.startswith("higher"):
            low = mid + 1
        elif reply.startswith("lower"):
            high = mid - 1


def _play(policy, row: dict) -> NumberGuess:  # noqa: ANN001
    env = NumberGuess()
    env.reset(**row)
    policy(env)
    return env


def test_bisection_wins_every_held_out_episode() -> None:
    assert len(HELD_OUT) == 32 and len({(r["n"], r["secret"]) for r in HELD_OUT}) == 32
    assert max(r["n"] for r in HELD_OUT) > 100 > min(r["n"] for r in HELD_OUT)  # easy to hard
    for row in HELD_OUT:
        env = _play(_bisect, row)
        assert env.get_reward() == 1.0 and env.done and not env.truncated, row
        assert env.turns <= budget(row["n"])


def _always_one(env: NumberGuess) -> None:
    while not env.truncated and not env.done:
        env.guess(1)


def _out_of_range(env: NumberGuess) -> None:
    while not env.truncated:
        env.guess(env.n + 1)


def _garbage(env: NumberGuess) -> None:
    for arg in ("seven", True, 2.5, None, [3]):
        if not env.truncated:
            assert env.guess(arg).startswith("error:")


@pytest.mark.parametrize("policy", [_always_one, _out_of_range, _garbage])
def test_policies_that_ignore_the_replies_score_zero(policy) -> None:  # noqa: ANN001
    for row in HELD_OUT:
        env = _play(policy, row)
        lucky = policy is _always_one and row["secret"] == 1
        assert env.get_reward() == (1.0 if lucky else 0.0), row
        if not lucky and policy is not _garbage:
            assert env.truncated and env.turns == budget(row["n"])


def test_repeats_and_bad_guesses_spend_turns() -> None:
    env = NumberGuess()
    env.reset(n=16, secret=11, prompt="ignored")
    assert env.max_turns == budget(16) == 5
    assert env.guess(8).startswith("higher")
    assert "already guessed" in env.guess(8)
    assert "outside 1..16" in env.guess(0)
    assert env.guess("x").startswith("error:")
    assert "no turns left" in env.guess(12)  # lower, and the 5th turn
    assert env.truncated and not env.done and env.get_reward() == 0.0
    assert env.guess(11).startswith("error: the episode is over")
    assert env.get_reward() == 0.0


def test_a_guess_the_replies_ruled_out_is_judged_a_mistake() -> None:
    env = NumberGuess(Settings(mistake_reward=-0.5))
    env.reset(n=16, secret=11)
    env.guess(8)  # higher: 9..16 left
    env.guess(4)  # ruled out by the reply, though in 1..16
    env.guess(13)  # lower: 9..12 left
    env.guess(8)  # repeated
    env.guess("x")  # malformed
    env.guess(17)  # outside 1..16
    assert env.step_rewards == [0.0, -0.5, 0.0, -0.5, -0.5]  # the 5th guess ended it
    assert env.truncated
    env.reset(n=16, secret=11)  # a new episode starts with none
    assert env.step_rewards == [] and env.guess(11) == "correct" and env.step_rewards == [0.0]


def test_a_string_integer_counts_as_a_guess() -> None:
    env = NumberGuess()
    env.reset(n=4, secret=3)
    assert env.guess("3") == "correct" and env.done and env.get_reward() == 1.0


def test_training_never_draws_a_held_out_episode() -> None:
    small = Settings(min_n=4, max_n=8, held_out=6)
    held = {(r["n"], r["secret"]) for r in held_out_episodes(small)}
    rows = train_episodes(400, small, seed=1)
    assert len(held) == 6 and not held & {(r["n"], r["secret"]) for r in rows}
    assert {r["n"] for r in rows} == {4, 5, 6, 7, 8}
    capped = train_episodes(50, seed=2, max_n=16)
    assert max(r["n"] for r in capped) <= 16
    assert train_episodes(5, seed=3) == train_episodes(5, seed=3)  # reproducible


def test_settings_and_episodes_are_checked() -> None:
    with pytest.raises(ValidationError, match="min_n"):
        Settings(min_n=64, max_n=8)
    with pytest.raises(ValidationError, match="held_out"):
        Settings(min_n=2, max_n=3, held_out=4)
    with pytest.raises(ValueError, match="not in"):
        NumberGuess().reset(n=4, secret=9)

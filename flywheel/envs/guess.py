"""NumberGuess: find a secret integer in [1, N] from "higher" / "lower" / "correct" replies.

    python -m pytest -q tests/envs/test_guess.py

Spec entry: ``{name: guess, class_path: "flywheel.envs.guess:NumberGuess", settings: {...}}``.

Difficulty is N (``min_n`` easy to ``max_n`` hard). The budget is K = ceil(log2 N) + 1 guesses:
bisection needs at most floor(log2 N) + 1 = ceil(log2(N + 1)) <= K, so an optimal policy always
wins, while a policy that does not use the replies (always 1, out of range, repeats) wins only
when its guess happens to be the secret. Reward is 1.0 only for a correct guess within the
budget; an out-of-range, repeated or malformed guess spends a turn, so it cannot buy time.
Each guess also gets a step reward (``step_rewards``): ``mistake_reward`` for one the replies
so far already ruled out (outside the range they allow, repeated, malformed), 0.0 otherwise.

``held_out_episodes`` is a fixed set (from ``seed``); ``train_episodes`` never draws one of its
(n, secret) pairs. Episodes are TRL dataset rows: ``{"prompt": [...], "n": N, "secret": s}``.
"""

from __future__ import annotations

import math
import random
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flywheel.envs.protocol import ToolEnvironment, tool

# Short on purpose: a small model reads the prompt again every turn.
PROMPT = "Find the secret number with the guess tool."


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_n: int = Field(4, ge=2, description="Smallest range (easiest episodes).")
    max_n: int = Field(1024, ge=2, description="Largest range (hardest episodes).")
    held_out: int = Field(32, ge=0, description="Episodes in the fixed held-out set.")
    seed: int = Field(0, description="Seed of the held-out set.")
    mistake_reward: float = Field(
        -1.0, le=0, description="Step reward of a guess the replies so far already ruled out."
    )

    @model_validator(mode="after")
    def _range(self) -> Settings:
        if self.min_n > self.max_n:
            raise ValueError(f"min_n ({self.min_n}) must be <= max_n ({self.max_n})")
        pairs = sum(range(self.min_n, self.max_n + 1))  # (n, secret) pairs there are
        if self.held_out * 2 > pairs:
            raise ValueError(f"held_out={self.held_out} leaves too few of {pairs} episodes")
        return self


def budget(n: int) -> int:
    """Guesses allowed for range [1, n]: ceil(log2 n) + 1."""
    return math.ceil(math.log2(n)) + 1


def episode(n: int, secret: int) -> dict[str, Any]:
    return {"prompt": [{"role": "user", "content": PROMPT}], "n": n, "secret": secret}


def _draw(rng: random.Random, low: int, high: int) -> tuple[int, int]:
    # N log-uniform: as many episodes at N ~ 8 as at N ~ 512, so every difficulty is seen
    n = round(math.exp(rng.uniform(math.log(low), math.log(high))))
    return n, rng.randint(1, n)


def held_out_episodes(settings: Settings | None = None) -> list[dict[str, Any]]:
    """The fixed evaluation set: ``held_out`` distinct (n, secret) pairs from ``seed``."""
    s = settings or Settings()
    rng, pairs = random.Random(f"held-out:{s.seed}"), {}
    while len(pairs) < s.held_out:
        pairs.setdefault(_draw(rng, s.min_n, s.max_n), None)
    return [episode(n, secret) for n, secret in pairs]


def train_episodes(
    count: int, settings: Settings | None = None, seed: int = 0, max_n: int | None = None
) -> list[dict[str, Any]]:
    """``count`` training episodes, none of them held out; ``max_n`` caps the difficulty (a
    curriculum raises it)."""
    s = settings or Settings()
    high = min(max_n or s.max_n, s.max_n)
    if high < s.min_n:
        raise ValueError(f"max_n={max_n} is below the settings' min_n={s.min_n}")
    held = {(e["n"], e["secret"]) for e in held_out_episodes(s)}
    free = sum(range(s.min_n, high + 1)) - sum(n <= high for n, _ in held)
    if free <= 0:
        raise ValueError(f"every episode with n <= {high} is held out")
    rng, out = random.Random(f"train:{seed}"), []
    while len(out) < count:
        pair = _draw(rng, s.min_n, high)
        if pair not in held:
            out.append(episode(*pair))
    return out


class NumberGuess(ToolEnvironment):
    """Guess the secret integer in [1, n] within ceil(log2 n) + 1 guesses."""

    Settings = Settings

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.n, self.secret, self.solved = 0, 0, False
        self._seen: set[int] = set()
        self._low, self._high = 1, 0  # the secret's range the replies so far allow

    def reset(self, n: int, secret: int, **_row: Any) -> str:
        """Start an episode; TRL also passes the row's other fields (``prompt``), ignored."""
        n, secret = int(n), int(secret)
        if not 1 <= secret <= n:
            raise ValueError(f"secret {secret} is not in [1, {n}]")
        self.n, self.secret, self.solved, self._seen = n, secret, False, set()
        self._low, self._high = 1, n
        self._start(budget(n))
        return f"\nIt is from 1 to {n}; {self.max_turns} guesses."

    @tool
    def guess(self, number: int) -> str:
        """Guess the secret number.

        Args:
            number: An integer between 1 and n, the top of the range.

        Returns:
            "higher" if the secret is larger, "lower" if smaller, "correct" if found.
        """
        self._judge(self.settings.mistake_reward)  # until the guess proves consistent
        if isinstance(number, bool) or not isinstance(number, int | str):
            return f"error: {number!r} is not an integer (turn spent)"
        try:
            value = int(number)
        except ValueError:
            return f"error: {number!r} is not an integer (turn spent)"
        left = f"{self.max_turns - self.turns} left"
        if self._low <= value <= self._high:  # a guessed number is outside it already
            self._judge(0.0)
        if not 1 <= value <= self.n:
            return f"error: {value} is outside 1..{self.n} (turn spent); {left}"
        if value in self._seen:
            return f"error: {value} was already guessed (turn spent); {left}"
        self._seen.add(value)
        if value == self.secret:
            self.solved = self.done = True
            return "correct"
        if self.secret > value:
            self._low = max(self._low, value + 1)
        else:
            self._high = min(self._high, value - 1)
        # The reply names the guess it answers: a small model need not look back for it.
        return f"{'higher' if self.secret > value else 'lower'} than {value}; {left}"

    def get_reward(self) -> float:
        return 1.0 if self.solved else 0.0


# -- scripted players (teachers of seed data, baselines in tests) ----------------------------
_RANGE = re.compile(r"from 1 to (\d+)")
_GUESS = re.compile(r'"number":\s*(-?\d+)')


def feasible(messages: list[dict[str, Any]]) -> tuple[int, int, set[int]]:
    """The secret's range ``[low, high]`` the conversation so far allows, and the numbers
    guessed: what a player who reads the replies knows."""
    text = next(m["content"] for m in messages if m["role"] == "user")
    found = _RANGE.search(text)
    low, high, guessed = 1, int(found.group(1)) if found else 1, set()
    last = None
    for m in messages:
        if m["role"] == "assistant":
            hit = _GUESS.search(m["content"])
            last = int(hit.group(1)) if hit else None
            if last is not None:
                guessed.add(last)
        elif m["role"] == "tool" and last is not None:
            if m["content"].startswith("higher"):
                low = max(low, last + 1)
            elif m["content"].startswith("lower"):
                high = min(high, last - 1)
    return low, high, guessed


def _call(number: int) -> str:
    from flywheel.loop.agents.toolcalls import format_tool_call

    return format_tool_call("guess", {"number": number})


def consistent_guess(messages: list[dict[str, Any]], rng: random.Random) -> str:
    """A uniformly random guess consistent with every reply so far (wins about two episodes
    in three within the budget: a teacher a model can learn, and beat)."""
    low, high, guessed = feasible(messages)
    options = [x for x in range(low, high + 1) if x not in guessed] or [low]
    return _call(rng.choice(options))


def bisection(messages: list[dict[str, Any]], _rng: random.Random | None = None) -> str:
    """The middle of the feasible range: always wins within the budget."""
    low, high, _ = feasible(messages)
    return _call((low + high) // 2)


def rough_bisection(messages: list[dict[str, Any]], rng: random.Random) -> str:
    """A guess drawn uniformly from the middle half of the feasible range: bisection done
    roughly (wins most episodes within the budget, not all: a teacher a model can learn, whose
    greedy imitation is near the middle, and that the loop can improve on)."""
    low, high, guessed = feasible(messages)
    span = high - low
    options = range(low + span // 4, high - span // 4 + 1)
    fresh = [x for x in options if x not in guessed] or [low]
    return _call(rng.choice(fresh))

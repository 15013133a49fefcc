"""The environment protocol, exactly as TRL 1.16's ``GRPOTrainer(environment_factory=...)`` uses it.

    python -m pytest -q tests/envs/test_protocol.py

What TRL does with an instance (``trl/trainer/grpo_trainer.py``), and so what we promise:

- the factory is called with no arguments; one instance per rollout, pooled and ``reset``
  between batches ("construct once, reset often");
- ``reset(**row)`` receives the whole dataset row as keyword arguments (``prompt`` included),
  and returns ``None`` or a string appended to the last user message;
- the tools are found with ``inspect.getmembers(type(env), predicate=inspect.isfunction)``:
  every public function of the class except ``reset`` and ``get_reward``. Each becomes a JSON
  schema through transformers' ``get_json_schema`` (type hints + a Google-style docstring
  describing every argument) when the chat template is rendered. So ``done`` and
  ``truncated`` are attributes, never methods, and helpers are private or module functions:
  any public method would be offered to the model as a tool;
- ``get_reward()`` takes no argument and returns a float, called once per finished rollout.

Optional, for loops that drive the environment themselves: ``step_rewards``, a list attribute
with one float per tool call so far, the environment's judgement of that step (0.0 neutral,
negative a mistake: a guess the replies already ruled out). The collector sums each model
turn's entries into the trajectory's ``step_rewards`` (anything but a list of finite numbers
ends that episode with an error naming it); acceptance can reject a trajectory with a mistake
in it (``min_step_reward``) and PPO adds them to the return. TRL ignores it.

TRL stops calling tools when the model stops or at ``max_tool_calling_iterations``; an
episode's own end (``done``: finished, ``truncated``: out of turns) is for loops that drive
the environment themselves (offline collection). ``ToolEnvironment`` keeps that bookkeeping,
and ``tool`` makes a method a turn that can never raise out of the environment.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

# What TRL excludes from the tool list (grpo_trainer.py, both where it probes and per batch).
NOT_TOOLS = ("reset", "get_reward")
OVER = "error: the episode is over; this call did nothing"


@runtime_checkable
class Environment(Protocol):
    """What ``environment_factory`` must return; tools are the class's other public methods."""

    done: bool  # the episode reached its end (solved, submitted)
    truncated: bool  # the episode ran out of turns first

    def reset(self, **episode: Any) -> str | None: ...

    def get_reward(self) -> float: ...


def tool_methods(env: object) -> list[Callable[..., Any]]:
    """The bound methods TRL exposes as tools, found the way ``GRPOTrainer.__init__`` finds them
    (on the class, so properties are not evaluated), in the same (alphabetical) order."""
    return [
        getattr(env, name)
        for name, _ in inspect.getmembers(type(env), predicate=inspect.isfunction)
        if name not in NOT_TOOLS and not name.startswith("_")
    ]


class ToolEnvironment:
    """Turn bookkeeping shared by the environments: a turn budget, ``done``, ``truncated``,
    and ``step_rewards`` (one 0.0 per tool call; a tool sets its own with ``_judge``).

    Subclasses call ``_start(max_turns)`` in ``reset``, set ``done = True`` when the episode
    ends on its own, and decorate each tool with ``tool``. No public methods here: TRL would
    offer them to the model.
    """

    done: bool = False
    truncated: bool = False
    turns: int = 0
    max_turns: int = 0
    step_rewards: list[float]

    def _start(self, max_turns: int) -> None:
        self.done, self.truncated, self.turns, self.max_turns = False, False, 0, max_turns
        self.step_rewards = []

    def _judge(self, reward: float) -> None:
        """The current tool call's step reward (it starts at 0.0)."""
        self.step_rewards[-1] = float(reward)

    @property
    def over(self) -> bool:
        """The episode has ended either way (a property: TRL lists only functions as tools)."""
        return self.done or self.truncated


def tool(method: Callable[..., Any]) -> Callable[..., str]:
    """A tool call is one turn and always returns text: a call after the end is refused, an
    exception or a non-string result becomes an ``error:`` observation (the turn is spent),
    and the last allowed turn truncates an unfinished episode.

    ``functools.wraps`` keeps the name, docstring and annotations that ``get_json_schema``
    reads, and ``inspect.signature`` follows ``__wrapped__`` to the real parameters.
    """

    @functools.wraps(method)
    def call(self: ToolEnvironment, *args: Any, **kwargs: Any) -> str:
        if self.over:
            return OVER
        self.turns += 1
        if not hasattr(self, "step_rewards"):  # a call before any reset
            self.step_rewards = []
        self.step_rewards.append(0.0)
        try:
            out = method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the model's call must never crash the rollout
            out = f"error: {type(exc).__name__}: {exc}"
        if not isinstance(out, str):
            out = f"error: {method.__name__} returned {type(out).__name__}, not text"
        if not self.done and self.turns >= self.max_turns:
            self.truncated = True
            out += f"\n(no turns left: the episode ended after {self.turns})"
        return out

    return call

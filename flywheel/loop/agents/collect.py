"""Collect multi-turn tool-calling episodes: every live episode's next turn in one policy call.

    python -m pytest -q tests/loop/agents/test_collect.py

``collect(policy, tokenizer, factory, episodes, ...)`` resets one environment per (episode,
sample), then turn by turn hands the policy the context of every episode still running (its
conversation and its exact token ids so far) and gets one ``Step`` back for each. The model's
tool calls (``toolcalls``: ``<tool_call>`` JSON) are run on the episode's environment and their
results become tool turns; a turn without a call, a malformed call, an unknown tool or bad
arguments becomes an ``error: ...`` tool turn, so the model hears what went wrong and the
collector carries on. An episode ends when its environment says ``done`` or ``truncated``,
after ``max_turns`` model turns, or when it has run ``episode_timeout_s`` seconds (checked
between turns: a tool call itself is bounded by its environment, e.g. the sandbox's
timeout); one that never solves its task within the budget ends truncated with the
environment's reward (0 for NumberGuess). ``reset`` or ``get_reward`` raising ends that
episode with ``error`` set, and so does a ``Step`` with ``error`` (the policy could not produce
that episode's turn, e.g. an endpoint request that failed after its retries): the other
episodes carry on.

Token ids are never re-tokenized from text: the completion is the concatenation of what the
policy generated (mask 1, its logprobs) and the template's rendering of what came between
(mask 0), so the rows are exactly what the model saw and produced (as exact as the policy's
``Step.token_ids``: an API that returns only text makes the policy re-tokenize its turn, see
``flywheel.loop.agents.openai_policy``'s chat mode).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from math import isfinite
from numbers import Real
from typing import Any, Literal, Protocol

import polars as pl

from flywheel.envs.protocol import tool_methods
from flywheel.loop.agents import toolcalls
from flywheel.loop.agents.trajectories import canonical, digest, trajectory_frame

NO_CALL = "error: no tool call in this turn; call a tool as " + toolcalls.format_tool_call(
    "tool_name", {"argument": "value"}
).replace("\n", " ")
_SENTINEL = "\x00flywheel-turn-end\x00"  # marks where the model's text ends in a rendering


class NoUserTurn(ValueError):
    """An episode row whose ``prompt`` has no user turn to append the observation to."""


@dataclass(frozen=True)
class Context:
    """What the policy continues: the conversation so far and its exact token ids (the
    rendered prompt, then every turn, ending with the assistant header); ``tools``: the JSON
    schemas of the environment's tools (also listed in the system turn), for an API that
    takes them separately."""

    messages: list[dict[str, Any]]
    token_ids: list[int]
    tools: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Step:
    """One model turn: its text (special tokens removed), the generated ids (the stop token
    included when it stopped), their sampling logprobs (None: not reported). ``error`` set:
    no turn was produced, and the episode ends with that error."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    finish_reason: Literal["stop", "length"] = "stop"
    error: str | None = None


class Policy(Protocol):
    """Maps a batch of contexts to one step each; ``backend`` and ``sampling`` go in the rows."""

    backend: str
    sampling: dict[str, Any]

    def __call__(self, contexts: list[Context]) -> list[Step]: ...


@dataclass(frozen=True)
class CollectSettings:
    max_turns: int = 12  # model turns per episode; the environment's own budget may be lower
    episode_timeout_s: float = 120.0  # wall clock per episode, so a slow env cannot stall a batch
    samples_per_episode: int = 1  # a GRPO group: samples of one episode share a group_id
    system_prompt: str | None = None  # None: the tools' JSON schemas (toolcalls.system_prompt)


@dataclass
class _Episode:
    env: Any
    tools: dict[str, Callable[..., Any]]
    messages: list[dict[str, Any]]
    prompt_ids: list[int]
    meta: dict[str, Any]
    schemas: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] | None = field(default_factory=list)
    turns: int = 0
    steps: list[float] = field(default_factory=list)  # the environment's, per model turn
    end: str = ""
    error: str | None = None


def collect(
    policy: Policy,
    tokenizer: Any,
    factory: Callable[[], Any],
    episodes: list[dict[str, Any]],
    env_name: str,
    env_settings: dict[str, Any] | None = None,
    settings: CollectSettings | None = None,
    checkpoint: str = "",
    cycle: int = 0,
) -> pl.DataFrame:
    """One trajectory row per (episode, sample), in episode-major order."""
    s = settings or CollectSettings()
    if s.max_turns < 1 or s.samples_per_episode < 1:
        raise ValueError("max_turns and samples_per_episode must be at least 1")
    settings_json = canonical(env_settings or {})
    live, finished = [], []
    for index, episode in enumerate(episodes):
        group = digest(env_name, settings_json, canonical(episode))
        for sample in range(s.samples_per_episode):
            meta = {"episode": episode, "index": index, "group_id": group, "sample": sample}
            ep = _start(factory, tokenizer, meta, s.system_prompt)
            (finished if ep.end else live).append(ep)
    while live:
        steps = policy([Context(ep.messages, ep.prompt_ids + ep.ids, ep.schemas) for ep in live])
        if len(steps) != len(live):
            raise ValueError(f"the policy returned {len(steps)} steps for {len(live)} contexts")
        for ep, step in zip(live, steps, strict=True):
            _advance(ep, step, tokenizer, s)
        finished += [ep for ep in live if ep.end]
        live = [ep for ep in live if not ep.end]
    common = {"env": env_name, "env_settings": settings_json, "checkpoint": checkpoint}
    common |= {"cycle": cycle, "backend": policy.backend, "sampling": canonical(policy.sampling)}
    finished.sort(key=lambda ep: (ep.meta["index"], ep.meta["sample"]))
    return trajectory_frame([_row(ep, common) for ep in finished])


def opening(env: Any, episode: dict[str, Any], system_prompt: str | None = None) -> list[dict]:
    """Reset ``env`` for ``episode`` and return the conversation's first turns: a system turn
    offering its tools (``system_prompt``, default the tools' JSON schemas), then the episode's
    prompt with the reset observation appended to the last user turn (as TRL does). Raises
    what ``reset`` raises, and ValueError for an episode without a user turn."""
    if system_prompt is None:
        system_prompt = toolcalls.system_prompt(toolcalls.tool_schemas(tool_methods(env)))
    messages = [{"role": "system", "content": system_prompt}]
    messages += [dict(m) for m in episode.get("prompt", [])]
    if not any(m["role"] == "user" for m in messages):
        raise NoUserTurn("the episode has no user turn in its 'prompt'")
    observation = env.reset(**episode)
    if observation:
        last = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last]["content"] += observation
    return messages


def _start(
    factory: Callable[[], Any], tokenizer: Any, meta: dict[str, Any], system: str | None
) -> _Episode:
    """A reset environment and its rendered opening (``opening``)."""
    env = factory()
    methods = tool_methods(env)
    schemas = toolcalls.tool_schemas(methods)  # what a chat endpoint is offered as tools
    ep = _Episode(env, {m.__name__: m for m in methods}, [], [], meta, schemas)
    try:
        ep.messages = opening(env, meta["episode"], system)
    except NoUserTurn as exc:
        ep.end, ep.error = "error", str(exc)
        return ep
    except Exception as exc:  # noqa: BLE001 - user environments can raise anything
        ep.end, ep.error = "error", f"reset raised {type(exc).__name__}: {exc}"
        return ep
    text = tokenizer.apply_chat_template(ep.messages, add_generation_prompt=True, tokenize=False)
    ep.prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ep


def _advance(ep: _Episode, step: Step, tokenizer: Any, s: CollectSettings) -> None:
    """Record the model's turn, run its tool calls, decide whether the episode ended, and if
    not, append the rendered tool turns and the next assistant header (mask 0)."""
    if step.error is not None:
        ep.end, ep.error = "error", f"the policy failed: {step.error}"
        return
    ep.turns += 1
    ep.ids += step.token_ids
    ep.mask += [1] * len(step.token_ids)
    if ep.logprobs is not None and step.logprobs is not None:
        if len(step.logprobs) != len(step.token_ids):
            raise ValueError("a step's logprobs and token_ids differ in length")
        ep.logprobs += step.logprobs
    else:
        ep.logprobs = None  # one turn without logprobs: the episode reports none
    calls = toolcalls.parse_tool_calls(step.text, set(ep.tools))
    assistant: dict[str, Any] = {"role": "assistant", "content": step.text}
    if calls:
        assistant["tool_calls"] = [c.as_message() for c in calls]
    ep.messages.append(assistant)
    try:
        judged = len(step_rewards(ep.env))
        results = [
            run_call(ep.env, ep.tools, c, f"call_{ep.turns}_{i}") for i, c in enumerate(calls)
        ]
        ep.steps.append(sum(step_rewards(ep.env)[judged:], 0.0))
    except ValueError as exc:  # the environment's own bookkeeping is broken: this episode ends
        ep.steps.append(0.0)
        ep.end, ep.error = "error", str(exc)
        return
    results = results or [{"role": "tool", "content": NO_CALL}]
    ep.messages += results
    ep.end = _end_reason(ep, s)
    if not ep.end:
        between = _between_turns(tokenizer, results, step)
        ids = tokenizer(between, add_special_tokens=False)["input_ids"]
        ep.ids += ids
        ep.mask += [0] * len(ids)
        if ep.logprobs is not None:
            ep.logprobs += [0.0] * len(ids)


def run_call(
    env: Any, tools: dict[str, Callable[..., Any]], call: toolcalls.ToolCall, call_id: str
) -> dict[str, Any]:
    """The tool turn answering ``call`` on ``env``; a refused call or a raising tool is an
    error text."""
    if call.error:
        content = f"error: {call.error}"
    elif env.done or env.truncated:
        content = "error: the episode is over; this call did nothing"
    else:
        try:
            out = tools[call.name](**call.arguments)
            content = out if isinstance(out, str) else str(out)
        except Exception as exc:  # noqa: BLE001 - wrong arguments or a raising tool
            content = f"error: {type(exc).__name__}: {exc}"
    return {"role": "tool", "tool_call_id": call_id, "name": call.name, "content": content}


def step_rewards(env: Any) -> list[float]:
    """``env.step_rewards`` as floats (none for an environment that keeps none); ValueError
    naming what is wrong when it is not a list of finite real numbers (numpy's count), never a
    silent 0."""
    judged = getattr(env, "step_rewards", None)
    if judged is None:
        return []
    if not isinstance(judged, list | tuple):
        raise ValueError(f"step_rewards is a {type(judged).__name__}, not a list of numbers")
    for value in judged:
        if isinstance(value, bool) or not isinstance(value, Real) or not isfinite(value):
            raise ValueError(f"step_rewards holds {value!r}, not a finite number")
    return [float(v) for v in judged]


def _end_reason(ep: _Episode, s: CollectSettings) -> str:
    if ep.env.done:
        return "done"
    if ep.env.truncated:
        return "env_truncated"
    if ep.turns >= s.max_turns:
        return "max_turns"
    if time.monotonic() - ep.started > s.episode_timeout_s:
        return "timeout"
    return ""


def _between_turns(tokenizer: Any, tool_turns: list[dict[str, Any]], step: Step) -> str:
    """The template's text from the end of the model's turn to the next assistant header:
    rendered after a sentinel assistant turn, less the stop token the model already wrote."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "assistant", "content": _SENTINEL}, *tool_turns],
        add_generation_prompt=True,
        tokenize=False,
    )
    between = rendered[rendered.index(_SENTINEL) + len(_SENTINEL) :]
    if step.finish_reason == "stop" and step.token_ids:
        stop = tokenizer.decode(step.token_ids[-1:])
        between = between.removeprefix(stop)
    return between


def _row(ep: _Episode, common: dict[str, Any]) -> dict[str, Any]:
    reward = 0.0
    if ep.error is None:
        try:
            reward = float(ep.env.get_reward())
        except Exception as exc:  # noqa: BLE001 - user environments can raise anything
            ep.end, ep.error = "error", f"get_reward raised {type(exc).__name__}: {exc}"
    turns = canonical(ep.messages)
    meta = ep.meta
    return {
        **common,
        # the episode's position too: a draw may repeat an episode, each play is its own row
        "episode_id": digest(
            meta["group_id"],
            str(meta["index"]),
            str(meta["sample"]),
            str(common["cycle"]),
            common["checkpoint"],
        ),  # fmt: skip
        "group_id": meta["group_id"],
        "sample": meta["sample"],
        "episode": canonical(meta["episode"]),
        "turns": turns,
        "prompt_ids": ep.prompt_ids,
        "completion_ids": ep.ids,
        "completion_mask": ep.mask,
        "logprobs": ep.logprobs,
        "step_rewards": ep.steps[:-1] + [ep.steps[-1] + reward] if ep.steps else [],
        "reward": reward,
        "done": ep.end == "done",
        "truncated": ep.end in ("env_truncated", "max_turns", "timeout"),
        "error": ep.error,
        "end_reason": ep.end,
        "num_turns": ep.turns,
        "trajectory_hash": digest(common["env"], turns),
        "elapsed_s": time.monotonic() - ep.started,
    }

"""Seed SFT data for an agent: an environment's episodes played by a scripted teacher.

    python -c "from flywheel.loop.agents.teacher import conversations as c; \
print(c(1, 0, 'flywheel.envs.guess:NumberGuess', 'flywheel.envs.guess:consistent_guess'))"

In a spec, as ``sft.data`` (kind python), so the seed model learns the tool-call format and a
first strategy before the loop improves on it from its own episodes:

    sft: {data: {kind: python, function: "flywheel.loop.agents.teacher:conversations",
                 num_examples: 6000, settings: {environment: ..., teacher: ...}}}

Each conversation is built exactly as the collector (``flywheel.loop.agents.collect``)
builds a played one: the same opening (system turn, prompt and reset observation), the same
tool turns (``run_call``), so the seed model trains on the format it later plays in. The
teacher is ``teacher(messages, rng) -> str``, the assistant's next text (a tool call), seeing
only the conversation, as a model would. Episodes come from the environment module's
``train_episodes(count, settings, seed)``, which never draws a held-out episode.
"""

from __future__ import annotations

import importlib
import random
from pathlib import Path
from typing import Any

from flywheel.core.settings.agents import EnvironmentSpec
from flywheel.envs.load import factory_settings, load_environment, module_function
from flywheel.envs.protocol import tool_methods
from flywheel.loop.agents.collect import opening, run_call
from flywheel.loop.agents.toolcalls import parse_tool_calls


def conversations(
    num_examples: int,
    seed: int,
    environment: str,
    teacher: str,
    settings: dict[str, Any] | None = None,
    system_prompt: str | None = None,
    max_turns: int = 12,
    only_solved: bool = False,
) -> list[dict[str, Any]]:
    """``num_examples`` SFT records ``{"messages": [...]}``, each one teacher-played episode of
    ``environment`` ('package.module:Class' with its ``settings``), ending on the teacher's
    last turn; ``only_solved`` keeps episodes with a positive reward only."""
    entry = EnvironmentSpec(name="teacher", class_path=environment, settings=settings or {})
    factory = load_environment(entry, Path.cwd())
    train_episodes = module_function(environment, Path.cwd(), "train_episodes")
    if train_episodes is None:
        module = environment.partition(":")[0]
        raise ValueError(f"{environment}: module {module} has no train_episodes()")
    env_settings = factory_settings(factory)
    play = _function(teacher)
    rng = random.Random(f"teacher:{seed}")
    records, drawn = [], 0
    while len(records) < num_examples:
        batch = train_episodes(num_examples, env_settings, seed=seed * 7919 + drawn)
        drawn += 1
        for episode in batch:
            env = factory()
            messages = _play(env, episode, play, rng, system_prompt, max_turns)
            if only_solved and not env.get_reward() > 0:
                continue
            records.append({"messages": messages})
            if len(records) == num_examples:
                break
    return records


def _play(
    env: Any, episode: dict[str, Any], play: Any, rng: random.Random, system: str | None, turns: int
) -> list[dict[str, Any]]:
    messages = opening(env, episode, system)
    tools = {m.__name__: m for m in tool_methods(env)}
    for turn in range(turns):
        text = play(messages, rng)
        messages.append({"role": "assistant", "content": text})
        calls = parse_tool_calls(text, set(tools))
        messages += [run_call(env, tools, c, f"call_{turn}_{i}") for i, c in enumerate(calls)]
        if env.done or env.truncated:
            break
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [{"role": m["role"], "content": m["content"]} for m in messages[: last + 1]]


def _function(path: str) -> Any:
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"teacher {path!r} cannot be imported: {exc}") from None

"""The spec's ``environments`` load: class imported, settings valid, tools TRL can describe.

    python -c "from flywheel.core.spec import load_spec; from flywheel.preflight.environments \
import check_environments; print(*check_environments(load_spec()), sep='\\n')"

For each entry, one problem naming its key: ``environments[i].class_path`` (does not import,
is not a class, lacks ``reset``/``get_reward``/any tool, its constructor fails, or a tool has
no JSON schema) or ``environments[i].settings`` (rejected by the class's ``Settings``). The
schema is made by transformers' ``get_json_schema``, the function that turns TRL's tool
callables into the schemas the chat template renders, so a tool missing a type hint or an
argument's docstring line fails here instead of at trainer start.

The environment ``agent.environment`` names is also played a little, as a cycle plays it:
its module has ``train_episodes(count, settings, seed)`` and ``held_out_episodes(settings)``
(the gate's episodes), and the first ``SAMPLE_EPISODES`` of each open (the episode's
``prompt`` has a user turn, ``reset`` takes the row), so an episode the collector cannot start
is one problem on ``agent.environment`` before anything trains.
"""

from __future__ import annotations

from typing import Any

from flywheel.core.spec import Spec
from flywheel.envs.load import EnvironmentLoadError, load_environment
from flywheel.envs.protocol import tool_methods
from flywheel.preflight.problems import Problem, error, raised

SAMPLE_EPISODES = 4  # opened from each of train_episodes and held_out_episodes
EPISODE_ROW = (
    "an episode is a row: 'prompt' (chat messages with a user turn) and the keyword "
    "arguments of reset"
)


def check_environments(spec: Spec) -> list[Problem]:
    problems = []
    for i, entry in enumerate(spec.environments):
        try:
            factory = load_environment(entry, spec.base_dir)
        except EnvironmentLoadError as exc:
            problems.append(error(f"environments[{i}].{exc.field}", str(exc)))
            continue
        bad = _schema_problems(factory())
        if bad:
            problems.append(error(f"environments[{i}].class_path", "; ".join(bad)))
    if not problems and spec.agent is not None:
        problems += _agent_episodes(spec)
    return problems


def _agent_episodes(spec: Spec) -> list[Problem]:
    """Draw and open a few of the agent's training and held-out episodes."""
    from flywheel.loop.agents.cycle import agent_environment  # imports polars: only for an agent

    try:
        env = agent_environment(spec)
    except ValueError as exc:  # the module has no train_episodes
        return [error("agent.environment", str(exc))]
    module = env.train_episodes.__module__
    if env.held_out_episodes is None:
        why = (
            f"module {module} has no held_out_episodes(settings): the fixed episodes every "
            f"cycle's checkpoint plays for env/{env.name}/success and the gate compares"
        )
        return [error("agent.environment", why)]
    draws = {
        "train_episodes": lambda: env.train_episodes(SAMPLE_EPISODES, env.settings, seed=0),
        "held_out_episodes": env.held_out,
    }
    problems = []
    for name, draw in draws.items():
        why = _unopened(env.factory, draw, spec.agent.system_prompt)
        if why is not None:
            problems.append(error("agent.environment", f"{module}.{name}: {why}"))
    return problems


def _unopened(factory: Any, draw: Any, system_prompt: str | None) -> str | None:
    """Why the first episodes ``draw()`` returns cannot start a conversation, or None."""
    from flywheel.loop.agents.collect import opening

    try:
        episodes = list(draw())[:SAMPLE_EPISODES]
    except Exception as exc:  # noqa: BLE001 - the user's episode function can raise anything
        return f"raised {raised(exc)}"
    if not episodes:
        return "returned no episodes"
    for k, episode in enumerate(episodes):
        if not isinstance(episode, dict):
            return f"episode {k} is a {type(episode).__name__}; {EPISODE_ROW}"
        try:
            opening(factory(), episode, system_prompt)
        except Exception as exc:  # noqa: BLE001 - reset is user code too
            return f"episode {k} does not start: {raised(exc)}; {EPISODE_ROW}"
    return None


def _schema_problems(env: object) -> list[str]:
    from transformers.utils import get_json_schema  # heavy: only when a spec has environments

    bad = []
    for method in tool_methods(env):
        try:
            get_json_schema(method)
        except Exception as exc:  # noqa: BLE001 - DocstringParsingException, TypeHint...
            bad.append(f"tool {method.__name__!r} has no JSON schema: {exc}")
    return bad

"""Both environments keep the protocol TRL 1.16's GRPOTrainer(environment_factory=...) uses.

    .venv/bin/python -m pytest -q tests/envs/test_protocol.py

TRL finds tools inside ``GRPOTrainer.__init__`` (no function of its own to call), so the tests
check that its source still does what ``tool_methods`` mirrors, then run the transformers code
TRL hands the tools to: ``render_jinja_template`` (what ``apply_chat_template(tools=...)``
calls), which turns each bound method into a schema with ``get_json_schema``.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import trl.trainer.grpo_trainer as grpo
from transformers.utils import get_json_schema
from transformers.utils.chat_template_utils import render_jinja_template

from flywheel.envs import guess, python_tool
from flywheel.envs.protocol import OVER, Environment, tool_methods

FAST = python_tool.Settings(timeout_s=1.5, max_turns=3)
CASES = {
    "guess": (guess.NumberGuess, guess.held_out_episodes()[0], ["guess"]),
    "python": (
        lambda: python_tool.PythonTool(FAST),
        python_tool.held_out_episodes()[0],
        ["run_python", "submit"],
    ),
}


def test_trl_discovers_tools_the_way_tool_methods_does() -> None:
    source = Path(inspect.getsourcefile(grpo)).read_text()
    assert "inspect.getmembers(type(instance), predicate=inspect.isfunction)" in source
    assert (
        'member_name not in ("reset", "get_reward") and not member_name.startswith("_")' in source
    )
    assert "observation = environment.reset(**reset_kwargs)" in source  # the whole row


@pytest.mark.parametrize("case", CASES)
def test_environment_conforms(case: str) -> None:
    factory, row, tools = CASES[case]
    env = factory()
    assert isinstance(env, Environment)
    assert [t.__name__ for t in tool_methods(env)] == tools  # done/truncated/over are no tools
    observation = env.reset(**row)  # the row as TRL passes it, `prompt` included
    assert isinstance(observation, str) and observation
    assert (env.done, env.truncated) == (False, False)
    assert env.get_reward() == 0.0 and isinstance(env.get_reward(), float)
    for schema in (get_json_schema(t) for t in tool_methods(env)):
        fn = schema["function"]
        assert fn["description"] and set(fn["parameters"]["required"]) == set(
            fn["parameters"]["properties"]
        )
        assert all(p["description"] for p in fn["parameters"]["properties"].values())


def test_the_chat_template_renders_the_tools_trl_passes() -> None:
    template = "{% for t in tools %}{{ t | tojson }}\n{% endfor %}{{ messages[0].content }}"
    for factory, row, names in CASES.values():
        env = factory()
        prompt = row["prompt"][0]["content"] + env.reset(**row)
        text = render_jinja_template(
            conversations=[[{"role": "user", "content": prompt}]],
            tools=tool_methods(env),
            chat_template=template,
        )[0][0]
        schemas = [json.loads(line) for line in text.splitlines()[: len(names)]]
        assert [s["function"]["name"] for s in schemas] == names
        assert text.endswith(prompt)


@pytest.mark.parametrize("case", CASES)
def test_bad_calls_are_observations_not_exceptions(case: str) -> None:
    factory, row, tools = CASES[case]
    env = factory()
    env.reset(**row)
    first = getattr(env, tools[0])
    assert first(no_such_argument=1).startswith("error: TypeError")  # the model's wrong call
    assert first().startswith("error: TypeError")
    assert env.turns == 2  # each spent a turn
    while not (env.done or env.truncated):
        first(None)
    assert env.truncated and env.get_reward() == 0.0
    assert first(None) == OVER  # after the end nothing counts


@pytest.mark.parametrize("case", CASES)
def test_reset_starts_over(case: str) -> None:
    """TRL pools instances and resets them between batches."""
    factory, row, tools = CASES[case]
    env = factory()
    env.reset(**row)
    while not env.truncated:
        getattr(env, tools[0])(None)
    env.reset(**row)
    assert (env.done, env.truncated, env.turns) == (False, False, 0)

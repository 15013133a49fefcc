"""``flywheel check`` plays a little of a user's own agent environment before anything trains.

.venv/bin/python -m pytest -q tests/envs/test_agent_preflight.py

The environment ``agent.environment`` names must draw episodes (``train_episodes``), have the
held-out ones the gate scores (``held_out_episodes``), and start a conversation from them; the
seed SFT data a scripted teacher plays (``sft.data`` kind python) is made for a few records.
Each mistake a user makes in that module is one error, naming the spec key and the line.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from flywheel.core.spec import load_spec
from flywheel.preflight import errors, preflight
from flywheel.preflight.problems import Problem
from flywheel.project.runner import template
from tests.conftest import write_spec

# A user's environment next to the spec: the one `flywheel init --agent` writes, (a+b)*c
# through a calculator tool; each test breaks it the way a user might.
ENV = template("calculator.py.tmpl")

SPEC = """
name: mine
environments:
  - {{name: calc, class_path: "{module}:Calculator", settings: {{max_value: 12}}}}
agent: {{environment: calc, system_prompt: "Call calc, then answer."}}
sft:
  data:
    kind: python
    function: flywheel.loop.agents.teacher:conversations
    num_examples: 1000
    settings: {{environment: "{module}:Calculator", teacher: "{module}:{teacher}",
               system_prompt: "Call calc, then answer."}}
"""


def _check(tmp_path: Path, source: str, teacher: str = "careless_teacher") -> list[Problem]:
    """``flywheel check``'s errors for the spec over ``source`` as a fresh module."""
    module = f"calc_env_{uuid.uuid4().hex[:8]}"  # a new name: never a cached module
    (tmp_path / f"{module}.py").write_text(source)
    spec = load_spec(write_spec(tmp_path, SPEC.format(module=module, teacher=teacher)))
    return errors(preflight(spec))


def _only(problems: list[Problem], key: str) -> list[str]:
    assert {p.key for p in problems} == {key}, problems
    return [p.message for p in problems]


def test_a_working_environment_and_teacher_pass(tmp_path: Path) -> None:
    assert _check(tmp_path, ENV) == []


def test_a_module_without_train_episodes_is_an_error(tmp_path: Path) -> None:
    source = ENV.replace("def train_episodes(", "def training_episodes(")
    env, made = sorted(_check(tmp_path, source), key=lambda p: p.key)
    assert env.key == "agent.environment"
    assert "has no train_episodes(count, settings, seed)" in env.message
    assert "environment 'calc' (calc_env_" in env.message
    assert made.key == "sft.data.function"  # the teacher draws its episodes there too
    assert "has no train_episodes()" in made.message


def test_a_module_without_held_out_episodes_is_one_error(tmp_path: Path) -> None:
    source = ENV.replace("held_out_episodes(", "fixed_episodes(")  # defined, and used in train
    (message,) = _only(_check(tmp_path, source), "agent.environment")
    assert "has no held_out_episodes(settings)" in message
    assert "env/calc/success" in message


def test_episodes_without_a_user_turn_cannot_start(tmp_path: Path) -> None:
    source = ENV.replace(
        'PROMPT = [{"role": "user", "content": "Use calc, then answer."}]', "PROMPT = []"
    )
    problems = _check(tmp_path, source)
    env = sorted(p.message for p in problems if p.key == "agent.environment")
    made = [p for p in problems if p.key == "sft.data.function"]
    assert len(problems) == 3 and len(made) == 1  # the teacher plays the same episodes
    assert ".held_out_episodes: episode 0 does not start: NoUserTurn" in env[0]
    assert ".train_episodes: episode 0 does not start: NoUserTurn" in env[1]
    assert all("'prompt' (chat messages with a user turn)" in m for m in env)


def test_a_reset_that_raises_names_the_line(tmp_path: Path) -> None:
    source = ENV.replace("self.target, self.solved = (a + b) * c, False", "self.target = a * d")
    problems = _check(tmp_path, source)
    assert {p.key for p in problems} == {"agent.environment", "sft.data.function"}
    lines = [n for n, text in enumerate(source.splitlines(), 1) if "a * d" in text]
    for problem in problems:
        assert "NameError: name 'd' is not defined" in problem.message
        assert f".py:{lines[0]}, in reset)" in problem.message


def test_a_misnamed_teacher_is_an_error_on_sft_data(tmp_path: Path) -> None:
    (message,) = _only(_check(tmp_path, ENV, teacher="teach"), "sft.data.function")
    assert "teacher 'calc_env_" in message and "cannot be imported" in message


def test_a_teacher_that_raises_names_the_line(tmp_path: Path) -> None:
    source = ENV.replace("a, b, c = (int(x)", "a, b = (int(x)")
    (message,) = _only(_check(tmp_path, source), "sft.data.function")
    assert "raised ValueError: too many values to unpack" in message
    assert "in careless_teacher)" in message


def test_made_records_are_parsed_as_the_sft_stage_parses_them(tmp_path: Path) -> None:
    source = ENV + "\n\ndef made(num_examples, seed):\n    return [{'text': 'x'}] * num_examples\n"
    module = f"made_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(source)
    body = f"name: made\nsft: {{data: {{kind: python, function: '{module}:made'}}}}\n"
    (problem,) = errors(preflight(load_spec(write_spec(tmp_path, body))))
    assert problem.key == "sft.data.function"
    assert "no usable record: all of the first 4 record(s) are bad" in problem.message

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
from tests.conftest import write_spec

# A user's environment next to the spec: compute a*b+c with a calculator, then answer.
ENV = '''
import random
import re

from pydantic import BaseModel

from flywheel.envs.protocol import ToolEnvironment, tool
from flywheel.loop.agents.toolcalls import format_tool_call

PROMPT = [{"role": "user", "content": "Use calc, then answer."}]


class Settings(BaseModel):
    top: int = 20


class Calc(ToolEnvironment):
    Settings = Settings

    def __init__(self, settings=None):
        self.settings = settings or Settings()
        self.target = 0

    def reset(self, a: int, b: int, c: int, **_row) -> str:
        self.target, self.solved = a * b + c, False
        self._start(4)
        return f" Compute {a}*{b}+{c}."

    @tool
    def calc(self, expression: str) -> str:
        """Evaluate arithmetic.

        Args:
            expression: digits, + - * and parentheses.
        """
        if not re.fullmatch(r"[0-9+*() -]+", expression):
            return "error: digits and + - * ( ) only"
        return str(eval(expression))

    @tool
    def answer(self, number: int) -> str:
        """Submit the result.

        Args:
            number: the value.
        """
        self.solved, self.done = int(number) == self.target, True
        return "correct" if self.solved else "wrong"

    def get_reward(self) -> float:
        return float(self.solved)


def _episodes(count, settings, tag):
    rng = random.Random(tag)
    top = (settings or Settings()).top
    return [{"prompt": PROMPT, "a": rng.randint(2, top), "b": rng.randint(2, top),
             "c": rng.randint(0, top)} for _ in range(count)]


def held_out_episodes(settings=None):
    return _episodes(20, settings, "held")


def train_episodes(count, settings=None, seed=0):
    return _episodes(count, settings, f"train:{seed}")


def teacher(messages, rng):
    a, b, c = re.search(r"(\\d+)\\*(\\d+)\\+(\\d+)", messages[1]["content"]).groups()
    if messages[-1]["role"] != "tool":
        return format_tool_call("calc", {"expression": f"{a}*{b}+{c}"})
    return format_tool_call("answer", {"number": int(messages[-1]["content"])})
'''

SPEC = """
name: mine
environments:
  - {{name: calc, class_path: "{module}:Calc", settings: {{top: 12}}}}
agent: {{environment: calc, system_prompt: "Call calc, then answer."}}
sft:
  data:
    kind: python
    function: flywheel.loop.agents.teacher:conversations
    num_examples: 1000
    settings: {{environment: "{module}:Calc", teacher: "{module}:{teacher}",
               system_prompt: "Call calc, then answer."}}
"""


def _check(tmp_path: Path, source: str, teacher: str = "teacher") -> list[Problem]:
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
    source = ENV.replace("def held_out_episodes(", "def test_episodes(")
    (message,) = _only(_check(tmp_path, source), "agent.environment")
    assert "has no held_out_episodes(settings)" in message
    assert "env/calc/success" in message


def test_episodes_without_a_user_turn_cannot_start(tmp_path: Path) -> None:
    source = ENV.replace('[{"role": "user", "content": "Use calc, then answer."}]', "[]")
    problems = _check(tmp_path, source)
    env = sorted(p.message for p in problems if p.key == "agent.environment")
    made = [p for p in problems if p.key == "sft.data.function"]
    assert len(problems) == 3 and len(made) == 1  # the teacher plays the same episodes
    assert ".held_out_episodes: episode 0 does not start: NoUserTurn" in env[0]
    assert ".train_episodes: episode 0 does not start: NoUserTurn" in env[1]
    assert all("'prompt' (chat messages with a user turn)" in m for m in env)


def test_a_reset_that_raises_names_the_line(tmp_path: Path) -> None:
    source = ENV.replace("self.target, self.solved = a * b + c, False", "self.target = a * d")
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
    source = ENV.replace("a, b, c = re.search", "a, b = re.search")
    (message,) = _only(_check(tmp_path, source), "sft.data.function")
    assert "raised ValueError: too many values to unpack" in message
    assert "in teacher)" in message


def test_made_records_are_parsed_as_the_sft_stage_parses_them(tmp_path: Path) -> None:
    source = ENV + "\n\ndef made(num_examples, seed):\n    return [{'text': 'x'}] * num_examples\n"
    module = f"made_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(source)
    body = f"name: made\nsft: {{data: {{kind: python, function: '{module}:made'}}}}\n"
    (problem,) = errors(preflight(load_spec(write_spec(tmp_path, body))))
    assert problem.key == "sft.data.function"
    assert "no usable record: all of the first 4 record(s) are bad" in problem.message

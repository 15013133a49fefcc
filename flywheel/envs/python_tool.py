"""PythonTool: integer arithmetic too long to do in one's head, with a real Python tool.

    python -m pytest -q tests/envs/test_python_tool.py

Spec entry: ``{name: calc, class_path: "flywheel.envs.python_tool:PythonTool", settings: {...}}``.

An episode is an expression over multi-digit integers (``+ - * // %``, parentheses); the model
may call ``run_python(code)`` (``flywheel.envs.sandbox``: a subprocess with a timeout, rlimits,
an empty environment and no ``socket``; its docstring says what is not isolated) and ends the
episode with ``submit(answer)``. Reward 1.0 if the submitted integer equals the expression's
value; no submission within ``max_turns`` tool calls scores 0. Answers are computed here with
an AST walk over integers only, never ``eval``.

``held_out_episodes`` is fixed by ``seed``; ``train_episodes`` never yields a held-out expression.
"""

from __future__ import annotations

import ast
import operator
import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flywheel.envs.protocol import ToolEnvironment, tool
from flywheel.envs.sandbox import run_python

PROMPT = (
    "Compute the value of the expression below exactly (// is floor division, % is the "
    "remainder). You may run Python with run_python; submit the integer with submit."
)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_OPS |= {ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(6, ge=1, description="Tool calls per episode, submit included.")
    timeout_s: float = Field(2.0, gt=0, le=60, description="Wall-clock limit of one run.")
    memory_mb: int = Field(256, ge=32, description="Address-space limit of one run (MiB).")
    max_output_chars: int = Field(2000, ge=16, description="Longest observation returned.")
    terms: int = Field(4, ge=2, le=12, description="Numbers per expression (difficulty).")
    digits: int = Field(5, ge=1, le=30, description="Digits per number (difficulty).")
    held_out: int = Field(32, ge=0, description="Expressions in the fixed held-out set.")
    seed: int = Field(0, description="Seed of the held-out set.")


def evaluate(expression: str) -> int:
    """The integer value of ``expression`` (integers, + - * // %, parentheses only)."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        raise ValueError(f"not integer arithmetic: {ast.dump(node)[:80]}")

    return walk(ast.parse(expression, mode="eval"))


def _expression(rng: random.Random, terms: int, digits: int) -> str:
    def number() -> str:
        return str(rng.randint(10 ** (digits - 1), 10**digits - 1))

    text = number()
    for _ in range(terms - 1):
        op = rng.choice(["+", "-", "*", "*", "//", "%"])
        # a product inside parentheses now and then, so precedence matters
        right = f"({number()} * {number()})" if rng.random() < 0.25 else number()
        text = f"{text} {op} {right}"
    return text


def episode(expression: str) -> dict[str, Any]:
    return {
        "prompt": [{"role": "user", "content": PROMPT}],
        "expression": expression,
        "answer": str(evaluate(expression)),
    }


def held_out_episodes(settings: Settings | None = None) -> list[dict[str, Any]]:
    s = settings or Settings()
    rng, seen = random.Random(f"held-out:{s.seed}"), {}
    while len(seen) < s.held_out:
        seen.setdefault(_expression(rng, s.terms, s.digits), None)
    return [episode(e) for e in seen]


def train_episodes(
    count: int, settings: Settings | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    s = settings or Settings()
    held = {e["expression"] for e in held_out_episodes(s)}
    rng, out = random.Random(f"train:{seed}"), []
    for _ in range(count * 100):  # collisions are rare unless digits and terms are tiny
        if len(out) == count:
            return out
        text = _expression(rng, s.terms, s.digits)
        if text not in held:
            out.append(episode(text))
    raise ValueError(f"cannot draw {count} expressions outside the held-out set; raise digits")


class PythonTool(ToolEnvironment):
    """Compute an arithmetic expression with a Python tool, then submit the integer."""

    Settings = Settings

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.expression, self.answer, self.submitted = "", "", None

    def reset(self, expression: str, answer: str | int | None = None, **_row: Any) -> str:
        """Start an episode; TRL also passes the row's other fields (``prompt``), ignored."""
        value = evaluate(expression)
        if answer is not None and str(answer).strip() != str(value):
            raise ValueError(f"episode answer {answer!r} is not {expression} = {value}")
        self.expression, self.answer, self.submitted = expression, str(value), None
        self._start(self.settings.max_turns)
        return f"\n{expression}"

    @tool
    def run_python(self, code: str) -> str:
        """Run a Python program in a fresh interpreter and return what it printed.

        Args:
            code: Python source; print what you want to see (no network, short time limit).

        Returns:
            The program's standard output, then its standard error and exit status if it failed.
        """
        if not isinstance(code, str):
            return f"error: code must be a string of Python source, got {type(code).__name__}"
        s = self.settings
        return run_python(code, s.timeout_s, s.memory_mb, s.max_output_chars)

    @tool
    def submit(self, answer: str) -> str:
        """Submit the final answer; this ends the episode.

        Args:
            answer: The value of the expression, as an integer.

        Returns:
            A confirmation that the answer was recorded.
        """
        self.submitted = str(answer).strip().replace(",", "").replace("_", "")
        self.done = True
        return f"submitted {self.submitted!r}; the episode is over"

    def get_reward(self) -> float:
        return 1.0 if self.submitted is not None and self.submitted == self.answer else 0.0

"""PythonTool runs real Python in a limited subprocess; nothing the code does escapes the env.

.venv/bin/python -m pytest -q tests/envs/test_python_tool.py
"""

from __future__ import annotations

import time

import pytest

from flywheel.envs.python_tool import (
    PythonTool,
    Settings,
    evaluate,
    held_out_episodes,
    train_episodes,
)

FAST = Settings(timeout_s=1.0, max_turns=4)
ROW = held_out_episodes()[0]


def _env() -> PythonTool:
    env = PythonTool(FAST)
    env.reset(**ROW)
    return env


def test_solving_with_real_python_scores_one() -> None:
    env = _env()
    printed = env.run_python(f"print({ROW['expression']})")
    assert printed.strip() == ROW["answer"] == str(evaluate(ROW["expression"]))
    assert env.submit(printed.strip()).startswith("submitted") and env.done
    assert env.get_reward() == 1.0 and not env.truncated


def test_a_wrong_or_missing_answer_scores_zero() -> None:
    env = _env()
    env.submit(str(int(ROW["answer"]) + 1))
    assert env.done and env.get_reward() == 0.0
    env.reset(**ROW)
    for _ in range(FAST.max_turns):
        env.run_python("print(1)")
    assert env.truncated and env.get_reward() == 0.0  # never submitted


def test_an_endless_loop_is_killed_at_the_timeout() -> None:
    env = _env()
    start = time.monotonic()
    out = env.run_python("while True: pass")
    assert out.startswith("error: timed out after 1 s")
    assert time.monotonic() - start < 5
    assert env.run_python("print('alive')").strip() == "alive"  # the env goes on


def test_the_code_cannot_open_a_socket() -> None:
    env = _env()
    out = env.run_python("import socket\nsocket.create_connection(('127.0.0.1', 9))\nprint('net')")
    assert "ModuleNotFoundError: import of socket halted" in out and "net" not in out
    out = env.run_python("import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9')")
    assert "socket" in out and "exit status 1" in out


def test_code_that_raises_or_prints_garbage_is_an_observation() -> None:
    env = _env()
    raised = env.run_python("print('before')\nraise ValueError('boom')")
    assert raised.startswith("before") and "ValueError: boom" in raised
    garbage = env.run_python("import sys\nsys.stdout.buffer.write(bytes(range(256)) * 50)")
    assert isinstance(garbage, str) and "\ufffd" in garbage  # undecodable bytes replaced
    assert len(garbage) <= FAST.max_output_chars + 40  # cut, with a note
    assert "\nstderr" not in garbage
    memory = env.run_python("x = bytearray(2 * 1024**3)")
    assert "MemoryError" in memory  # the address-space limit
    assert env.turns == 3


def test_the_child_sees_an_empty_environment() -> None:
    env = _env()
    out = env.run_python("import os, sys\nprint(sorted(os.environ), sys.flags.isolated)")
    assert "PYTHONPATH" not in out and out.strip().endswith("1")


def test_non_text_arguments_are_errors() -> None:
    env = _env()
    assert env.run_python(code=None).startswith("error:")
    assert env.run_python(bogus="x").startswith("error: TypeError")


def test_episodes_are_checked_and_held_out() -> None:
    held = {r["expression"] for r in held_out_episodes()}
    rows = train_episodes(64, seed=1)
    assert len(held) == 32 and not held & {r["expression"] for r in rows}
    assert all(r["answer"] == str(evaluate(r["expression"])) for r in rows)
    with pytest.raises(ValueError, match="not integer arithmetic"):
        evaluate("__import__('os').getcwd()")
    with pytest.raises(ValueError, match="is not"):
        PythonTool().reset(expression="2 * 3", answer="7")

"""User code next to the spec: ``plugins`` register verifier kinds and ``kind: python``
functions import from the spec's directory, whatever the working directory; acceptance uses
both here, eval in tests/loop/eval/test_eval_verifiers.py.

    .venv/bin/python -m pytest -q tests/loop/test_plugins.py
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flywheel.core.spec import Spec, parse_spec
from flywheel.loop.plugins import load_plugins
from flywheel.loop.verifiers import known_kinds
from tests.loop.test_accept import _accept, reasons, write_generations

# A plugin module: registers a kind when imported, and has a python verifier function.
CHECKS = """
from flywheel.loop.verifiers import register_verifier


def last_word(completion, answer, pattern=None):
    return completion.split()[-1] == answer


register_verifier("last_word", last_word)


def same(prompt, completion, answer):
    if answer is None:
        return False, "needs an answer"
    return completion.strip() == answer, f"not {answer}"
"""


def _spec(tmp_path: Path, verifier: dict[str, Any], plugins: list[str]) -> Spec:
    (tmp_path / "eval.jsonl").write_text(json.dumps({"prompt": "What is 2 + 2?", "answer": 4}))
    raw = {
        "data_dir": "data",
        "catalog": "catalog.duckdb",
        "plugins": plugins,
        "eval": {"tasks": [{"name": "sums", "kind": "jsonl", "path": "eval.jsonl"}]},
        "acceptance": {"verifier": verifier},
    }
    return parse_spec(raw, tmp_path / "flywheel.yaml")


def test_load_plugins_imports_from_the_spec_directory(tmp_path: Path, user_module) -> None:
    spec = _spec(tmp_path, {"kind": "exact"}, [user_module("checks", CHECKS)])
    assert str(tmp_path) not in sys.path and "last_word" not in known_kinds()
    load_plugins(spec)
    load_plugins(spec)  # imported once: registering "last_word" again would raise
    assert "last_word" in known_kinds()
    assert str(tmp_path) not in sys.path  # on sys.path only while importing


def test_load_plugins_names_every_module_that_fails(tmp_path: Path, user_module) -> None:
    bad = user_module("bad", "raise RuntimeError('boom')\n")
    spec = _spec(tmp_path, {"kind": "exact"}, [bad, "no_such_plugin_xyz"])
    with pytest.raises(ImportError) as err:
        load_plugins(spec)
    assert f"plugins[0] '{bad}': RuntimeError: boom" in str(err.value)
    assert "plugins[1] 'no_such_plugin_xyz': ModuleNotFoundError" in str(err.value)


GENERATIONS = [
    ("What is 7 + 12?", "19", ["19", "it is 19", "18"]),
    ("Name a colour", None, ["red"]),
]


@pytest.mark.parametrize(
    ("plugin", "verifier", "expected"),
    [
        (  # fn(prompt, completion, answer), not a plugin: its reasons are the rows' reasons
            False,
            lambda module: {"kind": "python", "function": f"{module}:same"},
            ["not 19", "not 19", "needs an answer"],
        ),
        (  # a kind the plugin registered, judged against the reference answer
            True,
            lambda module: {"kind": "last_word"},
            ["over_max_per_prompt", "incorrect", "no_reference"],
        ),
    ],
)
def test_acceptance_judges_with_user_code_next_to_the_spec(
    tmp_path: Path,
    user_module,
    plugin: bool,
    verifier: Callable[[str], dict[str, Any]],
    expected: list[str],
) -> None:
    module = user_module("checks", CHECKS)
    spec = _spec(tmp_path, verifier(module), [module] if plugin else [])
    write_generations(spec, 1, GENERATIONS)
    result = _accept(spec, 1)
    got = reasons(spec, 1)
    ids = ["c1-p0-s0", "c1-p0-s1", "c1-p0-s2", "c1-p1-s0"]
    assert got == dict(zip(ids, [None, *expected], strict=True))
    assert result.shardset.read()["verifier"].to_list() == [spec.acceptance.verifier.kind]

"""Preflight of verifiers: acceptance's and every eval task's are checked the same way, after
the spec's plugins are imported, and every problem is reported at once.

    .venv/bin/python -m pytest -q tests/test_preflight_verifiers.py
"""

from __future__ import annotations

import json
from pathlib import Path

from flywheel.core.spec import load_spec
from flywheel.preflight import preflight
from tests.conftest import write_spec

LAST_WORD = """
from flywheel.loop.verifiers import register_verifier

register_verifier("last_word", lambda completion, answer, pattern: completion.split()[-1] == answer)
"""


def test_an_unknown_kind_is_one_error_naming_the_key(tmp_path: Path) -> None:
    body = "eval: {tasks: [{name: a}, {name: b, verifier: {kind: nope}}]}\n"
    body += "cycles: {gate: {metric: accuracy/a}}\n"
    (problem,) = preflight(load_spec(write_spec(tmp_path, body)))
    assert (problem.level, problem.key) == ("error", "eval.tasks[1].verifier.kind")
    assert "unknown verifier kind 'nope'; known: contains, exact, numeric" in problem.message
    assert "`plugins`" in problem.message and "kind: python" in problem.message


def test_a_kind_a_plugin_registers_is_known_in_eval_and_acceptance(
    tmp_path: Path, user_module
) -> None:
    plugin = user_module("lastword", LAST_WORD)
    body = """
    {plugins}
    eval: {{tasks: [{{name: a, verifier: last_word}}]}}
    acceptance: {{verifier: {{kind: last_word}}}}
    cycles: {{gate: {{metric: accuracy/a}}}}
    """
    unknown = preflight(load_spec(write_spec(tmp_path, body.format(plugins=""))))
    keys = {"eval.tasks[0].verifier.kind", "acceptance.verifier.kind"}
    assert {p.key for p in unknown} == keys and all(p.level == "error" for p in unknown)
    with_plugin = body.format(plugins=f"plugins: [{plugin}]")
    assert preflight(load_spec(write_spec(tmp_path, with_plugin))) == []


def test_every_verifier_problem_is_reported_at_once(tmp_path: Path, user_module) -> None:
    fns = user_module("fns", "def two(prompt, completion):\n    return True\n")
    bad = user_module("bad", "raise RuntimeError('boom')\n")
    wrong = user_module(  # registers a function that cannot be called as a verifier
        "wrong",
        "from flywheel.loop.verifiers import register_verifier\n"
        "register_verifier('one_arg', lambda completion: True)\n",
    )
    rows = [{"prompt": "2+2?", "answer": "four"}, {"prompt": "3+3?", "answer": "6"}]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    body = f"""
    plugins: [{bad}, {wrong}]
    eval:
      tasks:
        - {{name: a, verifier: {{kind: python, function: "{fns}:two"}}}}
        - {{name: b, verifier: {{kind: python, function: "no_such_mod_q:f"}}}}
        - {{name: c, verifier: regex}}
        - {{name: d, verifier: {{kind: regex, pattern: "(unclosed {{answer}}"}}}}
        - {{name: e, verifier: {{kind: exact, function: "{fns}:two"}}}}
        - {{name: f, verifier: one_arg}}
        - {{name: g, kind: jsonl, path: qa.jsonl}}
    acceptance: {{verifier: {{kind: python, function: "{fns}:missing"}}}}
    cycles: {{gate: {{metric: accuracy/a}}}}
    """
    found = {(p.level, p.key): p.message for p in preflight(load_spec(write_spec(tmp_path, body)))}
    assert set(found) == {
        ("error", "plugins[0]"),
        ("error", "eval.tasks[0].verifier.function"),
        ("error", "eval.tasks[1].verifier.function"),
        ("error", "eval.tasks[2].verifier.pattern"),
        ("error", "eval.tasks[3].verifier.pattern"),
        ("warning", "eval.tasks[4].verifier.function"),
        ("error", "eval.tasks[5].verifier.kind"),
        ("warning", "eval.tasks[6].path"),  # an answer the default numeric verifier cannot read
        ("error", "acceptance.verifier.function"),
    }
    assert "RuntimeError: boom" in found["error", "plugins[0]"]
    assert (
        "cannot be called as fn(prompt, completion, answer)"
        in found["error", "eval.tasks[0].verifier.function"]
    )
    assert "cannot import 'no_such_mod_q'" in found["error", "eval.tasks[1].verifier.function"]
    assert "needs a pattern" in found["error", "eval.tasks[2].verifier.pattern"]
    assert "not a valid regex" in found["error", "eval.tasks[3].verifier.pattern"]
    assert (
        "cannot be called as fn(completion, answer, pattern)"
        in found["error", "eval.tasks[5].verifier.kind"]
    )
    assert "answer_not_a_number=1" in found["warning", "eval.tasks[6].path"]
    assert "has no 'missing'" in found["error", "acceptance.verifier.function"]

"""``flywheel init`` and the environment ``flywheel run`` / ``flywheel ui`` give Dagster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.cli import main
from flywheel.core.spec import OVERRIDES_ENV, SPEC_ENV, env_overrides, load_spec
from flywheel.loop.tasks import load_task_examples
from flywheel.preflight import errors, preflight
from flywheel.project import runner
from flywheel.project.scaffold import ScaffoldError, init_project
from flywheel.train.sft_data import load_sft_data


def test_init_writes_a_project_that_passes_its_own_check(tmp_path: Path) -> None:
    project = tmp_path / "mine"
    written = init_project(project)
    names = {p.relative_to(project).as_posix() for p in written}
    assert {"flywheel.yaml", "verifiers.py", "workspace.yaml", "dagster.yaml"} <= names
    spec = load_spec(project / "flywheel.yaml")
    assert errors(preflight(spec)) == []
    assert spec.acceptance.verifier.function == "verifiers:same_number"
    # The example data is what the stages read, and no eval problem is a prompt.
    seed = load_sft_data(spec.sft.data)
    assert seed.quarantine == [] and len(seed.examples) > 500
    held_out = {e["prompt"] for e in load_task_examples(spec.eval.tasks[0]).examples}
    prompts = [json.loads(line) for line in (project / "data/prompts.jsonl").open()]
    questions = {p["messages"][-1]["content"] for p in prompts}
    assert held_out and not held_out & questions
    # Every stage sees the system turn SFT trains with.
    assert {p["messages"][0]["role"] for p in prompts} == {"system"}
    assert seed.examples[0]["messages"][0] == prompts[0]["messages"][0]


def test_the_example_verifier_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_project(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from verifiers import same_number

    assert same_number("What is 2 + 3?", "5", "5") == (True, "correct")
    assert same_number("What is 2 + 3?", "6", "5") == (False, "wrong_number")
    assert same_number("What is 2 + 3?", "five", "5") == (False, "no_number")


def test_init_agent_writes_an_environment_project_that_passes_its_own_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``flywheel init --agent``: the environment, its episodes and the seed's teacher pass
    ``flywheel check`` (which plays them); the teacher is careless where it says it is."""
    assert main(["init", "--agent", str(tmp_path)]) == 0
    spec = load_spec(tmp_path / "flywheel.yaml")
    assert errors(preflight(spec)) == []
    assert spec.agent.environment == "calc" and spec.cycles.gate.metric == "env/calc/success"
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import calculator

    held = {(e["a"], e["b"], e["c"]) for e in calculator.held_out_episodes()}
    train = calculator.train_episodes(2000, seed=3)
    assert len(held) == 200 and not held & {(e["a"], e["b"], e["c"]) for e in train}
    env = calculator.Calculator()
    env.reset(**train[0])
    a, b, c = train[0]["a"], train[0]["b"], train[0]["c"]
    assert env.calc("1; import os").startswith("error:")
    assert env.calc(f"({a}+{b})*{c}") == str((a + b) * c)
    env.answer((a + b) * c)
    assert env.done and env.get_reward() == 1.0
    seed = load_sft_data(spec.sft.data)
    turns = [m["content"] for e in seed.examples for m in e["messages"]]
    calls = [t for t in turns if '"name": "calc"' in t]
    careless = [t for t in calls if '"expression": "(' not in t]
    assert seed.quarantine == [] and len(seed.examples) == spec.sft.data.num_examples
    assert 0.1 < len(careless) / len(calls) < 0.3  # 2 in 3 of the c <= 5 quarter


def test_init_never_overwrites_without_force(tmp_path: Path) -> None:
    (tmp_path / "flywheel.yaml").write_text("name: mine\n")
    with pytest.raises(ScaffoldError, match="flywheel.yaml"):
        init_project(tmp_path)
    assert (tmp_path / "flywheel.yaml").read_text() == "name: mine\n"
    assert not (tmp_path / "verifiers.py").exists()  # nothing half-written
    assert main(["init", str(tmp_path)]) == 2
    init_project(tmp_path, force=True)
    assert "my-flywheel" in (tmp_path / "flywheel.yaml").read_text()


def test_home_and_workspace_follow_the_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    spec_file = tmp_path / "flywheel.yaml"
    spec_file.write_text("name: mine\n")
    home = runner.dagster_home(spec_file)
    assert home == tmp_path / ".flywheel" / "dagster_home"
    assert "telemetry" in (home / "dagster.yaml").read_text()  # the packaged default
    written = runner.workspace_file(spec_file, home)
    assert written.parent == home and f"working_directory: {tmp_path}" in written.read_text()

    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (tmp_path / "workspace.yaml").write_text("load_from: []\n")
    assert (runner.dagster_home(spec_file) / "dagster.yaml").read_text().startswith("telemetry")
    assert runner.workspace_file(spec_file, home) == tmp_path / "workspace.yaml"

    custom = tmp_path / "elsewhere"
    monkeypatch.setenv("DAGSTER_HOME", str(custom))
    assert runner.dagster_home(spec_file) == custom  # run and ui agree on a custom home too


def test_env_hands_spec_overrides_and_import_path_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_file = tmp_path / "flywheel.yaml"
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    env = runner.project_env(spec_file, ["cycles.max_cycles=2"], tmp_path / "home")
    assert env[SPEC_ENV] == str(spec_file) and env["DAGSTER_HOME"] == str(tmp_path / "home")
    assert env["PYTHONPATH"].split(":")[:2] == [str(tmp_path), "/somewhere"]
    monkeypatch.setenv(OVERRIDES_ENV, env[OVERRIDES_ENV])
    assert env_overrides() == ["cycles.max_cycles=2"]


def test_overrides_in_the_environment_shape_the_definitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corpus_jsonl: Path
) -> None:
    from definitions import build_definitions

    spec_file = tmp_path / "flywheel.yaml"
    spec_file.write_text(f"sources: [{{name: alpha, kind: jsonl, path: {corpus_jsonl.name}}}]\n")
    source = f"sources=[{{name: beta, kind: jsonl, path: {corpus_jsonl.name}}}]"
    monkeypatch.setenv(OVERRIDES_ENV, json.dumps([source]))
    keys = build_definitions(str(spec_file)).resolve_asset_graph().get_all_asset_keys()
    assert {k.to_user_string() for k in keys} >= {"raw_beta"}
    assert "raw_alpha" not in {k.to_user_string() for k in keys}
    monkeypatch.setenv(OVERRIDES_ENV, "not json")
    with pytest.raises(ValueError, match="FLYWHEEL_SET"):
        env_overrides()

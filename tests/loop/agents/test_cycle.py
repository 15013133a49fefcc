"""Trajectories as cycle products: a tiny real champion plays NumberGuess (N <= 8).

python -m pytest -q tests/loop/agents/test_cycle.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from flywheel.core import artifacts
from flywheel.core import products as P
from flywheel.core.spec import SpecError, load_spec
from flywheel.envs.guess import Settings, held_out_episodes
from flywheel.loop.agents.cycle import (
    build_accepted_trajectories,
    build_trajectories,
    evaluate_held_out,
)
from flywheel.loop.agents.trajectories import SCHEMA, canonical
from flywheel.loop.cycles import cycle_reads
from tests.conftest import write_spec
from tests.loop.agents.conftest import Bisection
from tests.loop.eval.conftest import TINY_LLAMA

GUESS = "class_path: 'flywheel.envs.guess:NumberGuess', settings: {max_n: 8, held_out: 3}"
ENV = f"{{name: guess, {GUESS}}}"
AGENT = "{environment: guess, episodes: 3, samples_per_episode: 2, max_turns: 2, max_new_tokens: 6}"


def spec_text(agent: str = AGENT) -> str:
    return f"""
    data_dir: data
    catalog: catalog.duckdb
    environments:
      - {ENV}
    agent: {agent}
    """


@pytest.fixture
def champion(tmp_path: Path, tokenizer_dir: Path) -> artifacts.Artifact:
    """A published random-init 2-layer Llama with the tool-calling tokenizer."""
    from flywheel.core.settings.train import ModelSettings
    from flywheel.train.model import build_model
    from flywheel.train.tokenizer import load_tokenizer

    root = tmp_path / "champion"
    staging = artifacts.staging_dir(root)
    shutil.copytree(tokenizer_dir, staging, dirs_exist_ok=True)
    tok = load_tokenizer(tokenizer_dir)
    special = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    special["bos_token_id"] = tok.bos_token_id
    build_model(ModelSettings(config=TINY_LLAMA), len(tok), 2048, special, seed=3).save_pretrained(
        staging
    )
    return artifacts.publish(root, staging, stage="test")


def test_trajectories_are_published_reused_and_rebuilt_on_a_changed_setting(
    tmp_path: Path, champion: artifacts.Artifact
) -> None:
    spec = load_spec(write_spec(tmp_path, spec_text()))
    assert cycle_reads(spec, P.TRAJECTORIES, 1) == ([P.PROMOTED], [])
    handed = {P.PROMOTED: champion}
    first = build_trajectories(spec, 1, handed)
    rows = first.shardset.read()
    assert rows.schema == SCHEMA and rows.height == 3 * 2 and not first.reused
    assert set(rows["checkpoint"]) == {champion.version} and set(rows["cycle"]) == {1}
    assert rows["num_turns"].max() <= 2 and rows["group_id"].n_unique() == 3
    held = {canonical(e) for e in held_out_episodes(Settings(max_n=8, held_out=3))}
    assert not held & set(rows["episode"])  # never a held-out episode
    assert first.shardset.inputs == {P.PROMOTED: champion.version}
    assert first.metadata["rows"] == 6 and first.path.is_relative_to(tmp_path / "data")

    again = build_trajectories(spec, 1, handed)
    assert again.reused and again.version == first.version
    # accept settings do not change how the champion plays: still reused
    same = load_spec(write_spec(tmp_path, spec_text(AGENT[:-1] + ", accept: {dedup: false}}")))
    assert build_trajectories(same, 1, handed).reused

    hotter = load_spec(write_spec(tmp_path, spec_text(AGENT[:-1] + ", temperature: 0.5}")))
    rebuilt = build_trajectories(hotter, 1, handed)
    assert not rebuilt.reused and rebuilt.version != first.version
    assert "spec agent changed" in rebuilt.metadata["build_changes"]
    other_cycle = build_trajectories(spec, 2, handed)
    assert not other_cycle.reused  # seeded by the cycle: other episodes
    assert json.loads(other_cycle.shardset.read()["sampling"][0])["seed"] == 2


def test_accepted_and_rejected_add_up_with_reasons(
    tmp_path: Path, champion: artifacts.Artifact
) -> None:
    spec = load_spec(write_spec(tmp_path, spec_text()))
    trajectories = build_trajectories(spec, 0, {P.PROMOTED: champion})
    handed = {P.TRAJECTORIES: trajectories.shardset}
    result = build_accepted_trajectories(spec, 0, handed)
    m = result.shardset.manifest
    rejected = result.shardset.aux("rejected")
    assert m["counts"]["accepted"] + m["counts"]["rejected"] == 6 == m["counts"]["trajectories"]
    assert result.shardset.num_rows == m["counts"]["accepted"]
    assert rejected.height == m["counts"]["rejected"] == sum(m["reasons"].values())
    assert rejected["reason"].null_count() == 0
    assert result.shardset.inputs == {P.TRAJECTORIES: trajectories.version}
    assert build_accepted_trajectories(spec, 0, handed).reused

    # keep every completed-or-not, any-reward trajectory: only duplicates may be rejected
    lenient = "accept: {min_reward: null, require_completed: false}"
    loose = load_spec(write_spec(tmp_path, spec_text(AGENT[:-1] + f", {lenient}}}")))
    again = build_accepted_trajectories(loose, 0, handed)
    assert not again.reused and set(again.shardset.manifest["reasons"]) <= {"duplicate"}
    assert again.shardset.num_rows + again.shardset.aux("rejected").height == 6
    with pytest.raises(P.InputError, match="missing trajectories"):
        build_accepted_trajectories(spec, 0, {})


def test_held_out_evaluation_plays_the_fixed_set(tmp_path: Path, tokenizer: Any) -> None:
    spec = load_spec(write_spec(tmp_path, spec_text("{environment: guess, max_turns: 6}")))
    scores = evaluate_held_out(spec, tmp_path, policy=Bisection(tokenizer))
    assert scores["env/guess/success"] == 1.0 and scores["env/guess/mean_reward"] == 1.0
    assert 1.0 <= scores["env/guess/mean_turns"] <= 4.0  # bisection: at most log2(8) + 1
    one_turn = load_spec(write_spec(tmp_path, spec_text("{environment: guess, max_turns: 1}")))
    cut = evaluate_held_out(one_turn, tmp_path, policy=Bisection(tokenizer))
    assert cut["env/guess/mean_turns"] == 1.0 and cut["env/guess/success"] < 1.0


def test_agent_environment_must_name_an_environment(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="agent.environment: 'gess' names no entry"):
        load_spec(write_spec(tmp_path, spec_text("{environment: gess}")))
    assert load_spec(write_spec(tmp_path, "data_dir: data\n")).agent is None

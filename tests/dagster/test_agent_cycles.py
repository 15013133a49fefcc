"""Two agent cycles through the sensor, as a user runs them: ``flywheel run`` on a tiny copy
of ``examples/agent/flywheel.yaml`` materializes the graph (prose -> tokenizer -> pre-training
-> seed SFT on teacher-played NumberGuess episodes), and a real ``dagster-daemon`` turns the
loop: cycle 0's champion plays episodes (``trajectories``, out of process through Pipes),
the solved ones are accepted, the sensor counts them and starts cycle 1, which fine-tunes on
them, then trains on with PPO in the environment (``cycles.method: sft+ppo``), is evaluated on
held-out episodes and decided on their success rate.

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/dagster/test_agent_cycles.py -s
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from flywheel.core.artifacts import read_current as read_checkpoint
from flywheel.core.shards import read_current
from flywheel.core.spec import load_spec
from flywheel.loop import cycles

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# A tiny model and easy episodes (n <= 8: 3-4 guesses), so that a seed SFT of under a minute
# solves some episodes and cycle 0 accepts some: the sensor starts cycle 1 at one.
TINY = [
    "tokenizer.vocab_size=600",
    "tokenizer.max_docs=3000",
    'model.config={"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, '
    '"num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 128}',
    "pretrain.steps=4",
    "sft.steps=200",
    "sft.micro_batch=8",  # 16 episodes a step, in two balanced micro-batches
    "sft.grad_accum=2",
    "sft.save_every=100",
    "sft.data.num_examples=1600",
    'environments=[{"name": "guess", "class_path": "flywheel.envs.guess:NumberGuess", '
    '"settings": {"min_n": 2, "max_n": 8, "held_out": 8, "seed": 0}}]',
    'sft.data.settings.settings={"min_n": 2, "max_n": 8, "held_out": 8, "seed": 0}',
    "agent.episodes=24",
    "agent.max_new_tokens=64",  # a 600-token vocabulary spends more tokens on a call
    "cycles.threshold_rows=1",
    "cycles.max_cycles=1",
    "cycles.seed_replay=50",
    "cycles.train.steps=6",
    # cycle 1 also runs PPO in the environment after its SFT: one iteration of 4 episodes
    "cycles.method=sft+ppo",
    'cycles.ppo={"iterations": 1, "episodes_per_iteration": 4, "minibatch_size": 4, '
    '"ppo_epochs": 1, "save_every": 1}',
]


@pytest.mark.integration
@pytest.mark.timeout(1200)  # the whole graph and two cycles: ~5 minutes alone on 2 cores
def test_two_agent_cycles_turn_through_the_sensor(tmp_path: Path) -> None:
    spec_file = tmp_path / "flywheel.yaml"
    shutil.copy(ROOT / "examples" / "agent" / "flywheel.yaml", spec_file)
    home = tmp_path / "dagster_home"
    env = {**os.environ, "DAGSTER_HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}"}
    overrides = [arg for item in TINY for arg in ("--set", item)]
    run = subprocess.run(
        [str(BIN / "flywheel"), "run", "--spec", str(spec_file), "--timeout", "900", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "reached cycles.max_cycles" in run.stdout

    spec = load_spec(spec_file, TINY)
    played = read_current(cycles.trajectories_root(spec, 0))
    assert played.manifest["counts"]["rows"] == 24
    accepted = read_current(cycles.accepted_trajectories_root(spec, 0))
    assert accepted.num_rows >= 1
    # cycle 1 trained on those episodes: the training set holds them as conversations
    training = read_current(cycles.training_set_root(spec, 1)).read()
    episodes = training.filter(pl.col("origin") == "trajectory")
    assert set(episodes["generation_id"]) == set(accepted.read()["episode_id"])
    # each conversation holds every turn the model played, up to its last, with the tool's
    # replies between them (an episode solved at the first guess has none to hold)
    turns = dict(accepted.read().select("episode_id", "num_turns").iter_rows())
    for episode_id, raw in episodes.select("generation_id", "messages").iter_rows():
        roles = [m["role"] for m in json.loads(raw)]
        assert roles.count("assistant") == turns[episode_id] and roles[-1] == "assistant"
        assert roles.count("tool") >= turns[episode_id] - 1, roles

    report = subprocess.run(
        [str(BIN / "flywheel"), "report", "--spec", str(spec_file), "--json"],
        cwd=tmp_path,
        env={**env, "FLYWHEEL_SET": json.dumps(TINY)},  # as flywheel run hands --set down
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {r["cycle"]: r for r in json.loads(report.stdout)["cycles"]}
    assert set(rows) == {0, 1}
    assert rows[1]["method"] == "sft+ppo" and rows[0]["method"] == "seed sft"
    for row in rows.values():
        assert 0.0 <= row["env/guess/success"] <= 1.0 and row["env/guess/mean_turns"] >= 1
        assert row["promoted"] is not None
    assert rows[0]["accepted"] == accepted.num_rows
    # cycle 1's checkpoint: SFT, then PPO from that SFT model with the agent's turn budget
    checkpoint = read_checkpoint(cycles.checkpoint_root(spec, 1))
    metrics = checkpoint.meta["metrics"]
    assert metrics["method"] == "sft+ppo" and checkpoint.meta["lineage"]["method"] == "sft+ppo"
    assert metrics["steps"] == 6 and len(metrics["ppo/history"]) == 1
    assert metrics["ppo/generated_tokens"] > 0
    ppo = json.loads((checkpoint.path / "ppo.json").read_text())["settings"]
    assert (ppo["seed"], ppo["episodes_per_iteration"]) == (1, 4)
    assert ppo["max_turns"] == spec.agent.max_turns

    # lineage: an accepted episode -> the checkpoint that played it -> the set that trained on it
    episode = accepted.read()["episode_id"][0]
    lineage = subprocess.run(
        [str(BIN / "flywheel"), "lineage", episode, "--spec", str(spec_file), "--json"],
        cwd=tmp_path,
        env={**env, "FLYWHEEL_SET": json.dumps(TINY)},
        capture_output=True,
        text=True,
        check=True,
    )
    facts = json.loads(lineage.stdout)
    assert facts["generation"]["checkpoint"] == played.manifest["checkpoint"]
    assert facts["generation"]["status"] == "accepted"
    assert [u["cycle"] for u in facts["in_training_sets"]] == [1]

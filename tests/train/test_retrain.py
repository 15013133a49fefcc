"""Per-cycle retraining: SFT of the champion on the cycle's training set, then optionally DPO or
GRPO, published once as the cycle's checkpoint; real runs on a 1-layer, 32-wide model."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flywheel.core import artifacts, keys
from flywheel.core import products as P
from flywheel.core.catalog import Catalog, Decision
from flywheel.core.report import Reporter
from flywheel.core.shards import ShardSet, ShardWriter
from flywheel.core.spec import Spec, load_spec
from flywheel.data.arithmetic import addition_examples
from flywheel.loop.cycles import accepted_root, checkpoint_root, generations_root, training_set_root
from flywheel.loop.retrain import cycle_run, load_pairs, load_prompts, retrain_inputs, run_retrain
from flywheel.train import launch
from flywheel.train.finetune import FineTune
from tests.conftest import write_spec
from tests.train.test_preference import build_champion

SPEC = """
name: retrain-test
data_dir: data
catalog: catalog.duckdb
sft: {micro_batch: 4, log_every: 1, max_length: 64}
cycles:
  train: {steps: 4, lr: 0.003, warmup_steps: 0, save_every: 2}
  preference_train: {steps: 2, warmup_steps: 0, num_generations: 2, max_new_tokens: 6,
                     max_length: 64, max_prompts: 6}
"""


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> artifacts.Artifact:
    """The champion's checkpoint: only read by retraining, so one serves every test."""
    return build_champion(tmp_path_factory.mktemp("champion") / "sft_checkpoint")


def _spec(tmp_path: Path, *overrides: str) -> Spec:
    return load_spec(write_spec(tmp_path, SPEC), list(overrides))


def write_training_set(spec: Spec, cycle: int, seed: int = 0, generated: int = 8) -> ShardSet:
    """24 seed rows and ``generated`` accepted generations, as the cycle's training set."""
    problems = addition_examples(24 + generated, 1, 3, 5, seed=seed)
    n = len(problems)
    frame = pl.DataFrame(
        {
            "prompt_id": [f"p{i}" for i in range(n)],
            "prompt": [p["prompt"] for p in problems],
            "response": [p["answer"] for p in problems],
            "origin": ["seed"] * 24 + ["generation"] * generated,
            "cycle_added": pl.Series([0] * 24 + [cycle - 1] * generated, dtype=pl.Int64),
            "generation_id": pl.Series([None] * 24 + [f"g{i}" for i in range(generated)]),
        },
        schema_overrides={"generation_id": pl.String},
    )
    with ShardWriter(training_set_root(spec, cycle)) as writer:
        writer.write(frame)
        return writer.commit(cycle=cycle, parent_cycle=cycle - 1)


def write_accepted(spec: Spec, cycle: int, n: int = 4) -> ShardSet:
    """Cycle ``cycle``'s accepted set with ``n`` preference pairs (right sum vs. reversed)."""
    problems = addition_examples(n, 1, 3, 5, seed=100 + cycle)
    ids = [f"c{cycle}p{i}" for i in range(n)]
    pairs = pl.DataFrame(
        {
            "prompt_id": ids,
            "prompt": [p["prompt"] for p in problems],
            "chosen": [p["answer"] for p in problems],
            "rejected": [p["answer"][::-1] for p in problems],
            "chosen_generation_id": [f"{i}a" for i in ids],
            "rejected_generation_id": [f"{i}b" for i in ids],
            "cycle": pl.Series([cycle] * n, dtype=pl.Int64),
        }
    )
    with ShardWriter(accepted_root(spec, cycle)) as writer:
        writer.write(pairs.select("prompt_id", "prompt", completion=pl.col("chosen")))
        writer.write_aux("preference_pairs", pairs)
        return writer.commit(cycle=cycle)


def write_generations(spec: Spec, cycle: int) -> ShardSet:
    """Two samples of each of 5 prompts; one prompt has no reference answer."""
    problems = addition_examples(5, 1, 3, 5, seed=200 + cycle)
    answers = [p["answer"] for p in problems[:4]] + [None]
    frame = pl.DataFrame(
        {
            "prompt_id": [f"q{i}" for i in range(5)] * 2,
            "prompt": [p["prompt"] for p in problems] * 2,
            "answer": pl.Series(answers * 2, dtype=pl.String),
            "completion": ["123"] * 10,
        }
    )
    with ShardWriter(generations_root(spec, cycle)) as writer:
        writer.write(frame)
        return writer.commit(cycle=cycle)


def _handed(spec: Spec, champion: artifacts.Artifact, cycle: int = 1) -> dict[str, Any]:
    return retrain_inputs(spec, cycle, parent=champion.path)


def _retrain(spec: Spec, champion: artifacts.Artifact, cycle: int = 1) -> dict[str, Any]:
    with Reporter() as reporter:
        return run_retrain(spec, reporter, cycle, _handed(spec, champion, cycle))


def _published(spec: Spec, cycle: int = 1) -> artifacts.Artifact:
    root = checkpoint_root(spec, cycle)
    assert len(list(root.glob("v-*"))) == 1  # one published checkpoint per cycle
    work = next((root / "work").iterdir())
    assert not list(work.rglob("checkpoint-*")) and not (work / "sft-model").exists()
    return artifacts.read_current(root)


# -- unit: inputs, fingerprints, errors ----------------------------------------------------


def test_pairs_come_from_earlier_cycles_newest_first(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    handed = {P.of_cycle(P.ACCEPTED, k): write_accepted(spec, k) for k in (0, 1, 2)}
    data = load_pairs(handed, 2, limit=6)
    prompts = [e["prompt"][0]["content"] for e in data.examples]
    expected = [p["prompt"] for p in addition_examples(4, 1, 3, 5, seed=101)]
    expected += [p["prompt"] for p in addition_examples(4, 1, 3, 5, seed=100)][:2]
    assert prompts == expected  # cycle 1's four, then cycle 0's first two; never cycle 2's
    first = data.examples[0]
    assert first["chosen"][0]["role"] == first["rejected"][0]["role"] == "assistant"
    assert "0:" in data.source and "1:" in data.source and "2:" not in data.source
    assert load_pairs(handed, 0, limit=6).examples == []


def test_prompts_are_the_previous_cycles_answered_ones(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    handed = {P.of_cycle(P.GENERATIONS, 0): write_generations(spec, 0)}
    data = load_prompts(handed, 1, "grpo", limit=3)
    expected = addition_examples(5, 1, 3, 5, seed=200)[:3]
    assert [e["answer"] for e in data.examples] == [p["answer"] for p in expected]
    assert data.examples[0]["prompt"] == [{"role": "user", "content": expected[0]["prompt"]}]
    assert len(load_prompts(handed, 1, "grpo", limit=10).examples) == 4  # once each, no None
    assert load_prompts(handed, 2, "rloo", limit=10).examples == []  # cycle 1 generated nothing


def test_preference_examples_continue_the_generations_conversation(tmp_path: Path) -> None:
    """DPO pairs and GRPO prompts carry the conversation the generation continued (system
    and earlier turns), as SFT and generation rendered it."""
    spec = _spec(tmp_path)
    conversation = [
        {"role": "system", "content": "Digits only."},
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "2+2?"},
    ]
    row = {"prompt_id": "q", "prompt": "2+2?", "messages": json.dumps(conversation)}
    pair = {**row, "chosen": "4", "rejected": "5", "chosen_generation_id": "a"}
    pair |= {"rejected_generation_id": "b", "cycle": 0}
    with ShardWriter(accepted_root(spec, 0)) as writer:
        writer.write(pl.DataFrame([{**row, "completion": "4"}]))
        writer.write_aux("preference_pairs", pl.DataFrame([pair]))
        accepted = writer.commit(cycle=0)
    (dpo,) = load_pairs({P.of_cycle(P.ACCEPTED, 0): accepted}, 1, limit=4).examples
    assert dpo["prompt"] == conversation and dpo["chosen"][0]["content"] == "4"
    with ShardWriter(generations_root(spec, 0)) as writer:
        writer.write(pl.DataFrame([{**row, "answer": "4", "completion": "5"}]))
        generations = writer.commit(cycle=0)
    (rl,) = load_prompts({P.of_cycle(P.GENERATIONS, 0): generations}, 1, "grpo", 4).examples
    assert rl == {"prompt": conversation, "answer": "4"}


def test_fingerprint_covers_what_shapes_the_weights(
    tmp_path: Path, champion: artifacts.Artifact
) -> None:
    spec = _spec(tmp_path)
    write_training_set(spec, 1)
    write_accepted(spec, 0)

    def fingerprint(*overrides: str) -> str:
        spec = _spec(tmp_path, *overrides)
        return cycle_run(spec, 1, _handed(spec, champion))[0].fingerprint

    base = fingerprint()
    assert fingerprint("sft.log_every=3") == base  # bookkeeping only
    assert fingerprint("cycles.preference_train.lr=0.1") == base  # no preference stage
    assert fingerprint("cycles.train.lr=0.001") != base
    # A cycle trains with sft's settings where cycles.train sets none.
    assert fingerprint("sft.lr=0.01") == base  # cycles.train.lr=0.003 overrides it
    assert fingerprint("sft.weight_decay=0.1") != base  # not overridden: inherited
    assert fingerprint("cycles.train.lr=null") == fingerprint("cycles.train.lr=0.0003")
    dpo = fingerprint("cycles.preference=dpo")
    assert dpo not in (base, fingerprint("cycles.preference=grpo"))
    assert fingerprint("cycles.preference=dpo", "cycles.preference_train.beta=0.5") != dpo
    write_accepted(spec, 0, n=5)  # new pairs
    assert fingerprint("cycles.preference=dpo") != dpo
    write_training_set(spec, 1)  # the same rows, a new version of the training set
    assert fingerprint() != base


def test_a_cycles_build_key_names_what_changed(
    tmp_path: Path, champion: artifacts.Artifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = tmp_path / "retrainverifier.py"
    verifier.write_text("def judge(prompt, completion, answer):\n    return True, ''\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    grpo = ["cycles.preference=grpo", "acceptance.verifier.kind=python"]
    grpo.append("acceptance.verifier.function=retrainverifier:judge")
    spec = _spec(tmp_path, *grpo)
    first_set = write_training_set(spec, 1)
    write_generations(spec, 0)

    def run() -> FineTune:
        return cycle_run(spec, 1, _handed(spec, champion))[0]

    base = run()
    assert run().build_key == base.build_key and run().work == base.work  # (a) same inputs
    verifier.write_text("def judge(prompt, completion, answer):\n    return False, 'no'\n")
    fixed = run()  # (b) the reward's code changed: a new run, a new work dir
    assert fixed.fingerprint != base.fingerprint
    assert keys.changes(base.build_key, fixed.build_key) == [
        f"keyed_by:verifier_source changed: {base.build_key['keyed_by:verifier_source']} -> "
        f"{fixed.build_key['keyed_by:verifier_source']}"
    ]
    second_set = write_training_set(spec, 1, seed=1)  # (b) a new training set version
    changed = keys.changes(fixed.build_key, run().build_key)
    assert f"input training_set changed: {first_set.version} -> {second_set.version}" in changed
    assert any(c.startswith("training data changed: sha256 ") for c in changed)


def test_clear_errors(tmp_path: Path, champion: artifacts.Artifact) -> None:
    spec = _spec(tmp_path)
    with pytest.raises(FileNotFoundError, match="reads training_set of cycle 1: nothing publ"):
        _handed(spec, champion)
    write_training_set(spec, 1)
    with pytest.raises(artifacts.ArtifactError, match=r"parent \(champion\) .* does not exist"):
        retrain_inputs(spec, 1, parent=tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    with pytest.raises(artifacts.ArtifactError, match="incomplete: no manifest.json"):
        retrain_inputs(spec, 1, parent=tmp_path / "half")
    with pytest.raises(FileNotFoundError, match="no model was promoted up to cycle 0"):
        retrain_inputs(spec, 1)  # no --parent: the champion cycle 0 left, and none was
    with pytest.raises(ValueError, match="--cycle must be >= 1, got 0"):
        retrain_inputs(spec, 0, parent=champion.path)
    with pytest.raises(ValueError, match="--cycle must be >= 1, got 0"):
        cycle_run(spec, 0, {})
    grpo = _spec(tmp_path, "cycles.preference=grpo", "acceptance.verifier.kind=self_consistency")
    with pytest.raises(ValueError, match="cannot be a GRPO/RLOO reward"):
        cycle_run(grpo, 1, _handed(grpo, champion))
    odd = _spec(tmp_path, "cycles.preference=rloo", "cycles.preference_train.micro_batch=3")
    with pytest.raises(ValueError, match="not a multiple of num_generations"):
        cycle_run(odd, 1, _handed(odd, champion))
    inherited = _spec(tmp_path, "cycles.preference=rloo", "cycles.train.micro_batch=3")
    with pytest.raises(ValueError, match="= 3 completions per step"):
        cycle_run(inherited, 1, _handed(inherited, champion))  # the cycle's batch, inherited


def test_retrain_reads_the_champion_of_the_cycle_before_and_records_its_inputs(
    tmp_path: Path, champion: artifacts.Artifact
) -> None:
    spec = _spec(tmp_path, "cycles.preference=dpo")
    training_set = write_training_set(spec, 2)
    accepted = write_accepted(spec, 0)  # cycle 1 accepted nothing: no set, none read
    at = datetime.now(UTC)
    Catalog.open(spec.catalog).record_decision(
        Decision(0, champion.version, str(champion.path), "a", 0.1, None, None, True, "first", at)
    )
    handed = retrain_inputs(spec, 2)  # the champion cycle 1 left: cycle 0's
    expected = {
        P.TRAINING_SET: training_set.version,
        "promoted_model/1": champion.version,
        "accepted_generations/0": accepted.version,
    }
    assert P.versions(handed) == expected
    assert retrain_inputs(spec, 2, {"promoted_model/1": champion.version}).keys() == handed.keys()
    run = cycle_run(spec, 2, handed)[0]
    assert run.inputs == expected  # what the published checkpoint's manifest records
    assert run.parent.version == champion.version
    with pytest.raises(P.InputError, match="missing promoted_model/1"):
        cycle_run(spec, 2, {P.TRAINING_SET: training_set})


@pytest.mark.parametrize("processes", ["cycles.train.num_processes=2", "sft.num_processes=2"])
def test_launch_runs_retrain_with_the_cycle_settings(tmp_path: Path, processes: str) -> None:
    spec = _spec(tmp_path, processes)  # the cycle's own, or sft's when it sets none
    spec_file = launch.write_run_spec(spec, "retrain")
    assert spec_file.parent == spec.data_dir / "cycle_checkpoint" / "specs"
    extra = ["--cycle", 3, "--input", "promoted_model/2=v-1"]
    argv = launch.command("retrain", spec, spec_file, extra)
    assert "--multi_gpu" in argv and argv[argv.index("--num_processes") + 1] == "2"
    tail = ["-m", "flywheel.loop.retrain", "--spec", str(spec_file)]
    assert argv[-8:] == [*tail, "--cycle", "3", "--input", "promoted_model/2=v-1"]


# -- integration: the entry point and each preference stage ----------------------------------


@pytest.mark.integration
def test_retrain_publishes_the_cycle_and_reuses_it(
    tmp_path: Path, champion: artifacts.Artifact
) -> None:
    from transformers import AutoModelForCausalLM

    spec = _spec(tmp_path)
    training_set = write_training_set(spec, 1)
    extra = ["--cycle", "1", "--parent", str(champion.path)]
    argv = launch.command("retrain", spec, launch.write_run_spec(spec, "retrain"), extra)
    assert "accelerate.commands.launch" in argv and argv[-4:] == extra
    run = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "step 1/4: loss=" in run.stderr

    artifact = _published(spec)
    assert artifact.meta["stage"] == "cycle"
    lineage = artifact.meta["lineage"]
    assert lineage["parent_checkpoint"] == champion.version
    assert artifact.inputs == {
        "training_set": training_set.version,
        "promoted_model/0": champion.version,
    }
    assert (lineage["training_set"], lineage["cycle"]) == (training_set.version, 1)
    assert lineage["parent_cycle"] == 0 and lineage["preference"] == "none"
    assert (lineage["origin/seed"], lineage["origin/generation"]) == (24, 8)
    metrics = artifact.meta["metrics"]
    assert metrics["steps"] == 4 and math.isfinite(metrics["final_loss"])
    assert metrics["tokens_per_s"] > 0
    AutoModelForCausalLM.from_pretrained(artifact.path, local_files_only=True)
    row = Catalog.open(spec.catalog).query("SELECT * FROM checkpoints WHERE stage = 'cycle'")
    assert row.height == 1
    assert (row["checkpoint"][0], row["parent"][0]) == (artifact.version, champion.version)
    done = json.loads(next((artifact.path.parent / "work").glob("*/done.json")).read_text())
    assert done["metadata"]["training_set"] == training_set.version
    assert done["metadata"]["rows"] == 32 and done["metadata"]["checkpoint"] == str(artifact.path)

    # The same cycle again, by hand: nothing is trained, the same version is reported.
    spec_file = tmp_path / "flywheel.yaml"
    again = [sys.executable, "-m", "flywheel.loop.retrain", "--spec", str(spec_file), *extra]
    rerun = subprocess.run(again, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"already published as {artifact.version}" in rerun.stderr
    assert "step 1/" not in rerun.stderr
    assert artifacts.read_current(checkpoint_root(spec, 1)).version == artifact.version


@pytest.mark.integration
def test_dpo_cycle_publishes_one_checkpoint(tmp_path: Path, champion: artifacts.Artifact) -> None:
    spec = _spec(tmp_path, "cycles.preference=dpo")
    write_training_set(spec, 2)
    accepted = write_accepted(spec, 0)
    write_accepted(spec, 1)
    result = _retrain(spec, champion, cycle=2)
    artifact = _published(spec, cycle=2)
    assert result["version"] == artifact.version
    metrics = artifact.meta["metrics"]
    assert metrics["steps"] == 4  # SFT first
    assert metrics["preference"] == "dpo" and metrics["preference/steps"] == 2
    assert metrics["preference/examples"] == 6  # max_prompts of the 8 pairs
    assert all(math.isfinite(v) for _, v in metrics["preference/loss_curve"])
    # DPO starts from the cycle's SFT model, which is also its reference: the loss is ln 2.
    assert metrics["preference/first_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert f"0:{accepted.version}" in artifact.meta["lineage"]["preference_data"]
    assert result["metadata"]["preference/final_loss"] == metrics["preference/final_loss"]


@pytest.mark.integration
def test_grpo_cycle_is_rewarded_by_the_verifier(
    tmp_path: Path, champion: artifacts.Artifact
) -> None:
    spec = _spec(tmp_path, "cycles.preference=grpo", "acceptance.verifier.kind=exact")
    write_training_set(spec, 1)
    write_generations(spec, 0)
    _retrain(spec, champion)
    metrics = _published(spec).meta["metrics"]
    assert metrics["preference"] == "grpo" and metrics["preference/steps"] == 2
    assert metrics["preference/examples"] == 4
    # Exact match against the reference answer: the tiny champion (4 SFT steps from random
    # weights) writes no sum right, so every sample scores 0.0 (an accept-all reward: 1.0).
    assert metrics["preference/reward"] == 0.0 and metrics["preference/last/reward"] == 0.0


@pytest.mark.integration
def test_dpo_without_pairs_is_skipped(
    tmp_path: Path, champion: artifacts.Artifact, caplog: pytest.LogCaptureFixture
) -> None:
    spec = _spec(tmp_path, "cycles.preference=dpo")
    write_training_set(spec, 1)
    with caplog.at_level(logging.WARNING, logger="flywheel.train"):
        _retrain(spec, champion)
    assert "cycles.preference is dpo but there are no preference pairs" in caplog.text
    metrics = _published(spec).meta["metrics"]
    assert metrics["steps"] == 4 and "preference/steps" not in metrics
    assert metrics["preference/skipped"].startswith("no preference pairs")


@pytest.mark.integration
def test_a_crash_in_preference_keeps_the_sft_model(
    tmp_path: Path, champion: artifacts.Artifact, caplog: pytest.LogCaptureFixture
) -> None:
    spec = _spec(tmp_path, "cycles.preference=dpo")
    write_training_set(spec, 1)
    write_accepted(spec, 0)
    work = cycle_run(spec, 1, _handed(spec, champion))[0].work
    work.mkdir(parents=True)
    (work / "preference").write_text("")  # a file where DPO saves its checkpoints: it fails
    with pytest.raises(OSError):
        _retrain(spec, champion)
    assert (work / "sft-model" / artifacts.MANIFEST).exists()
    assert not artifacts.has_current(checkpoint_root(spec, 1))

    (work / "preference").unlink()
    with caplog.at_level(logging.INFO, logger="flywheel.train"):
        _retrain(spec, champion)
    assert "SFT of this run is done" in caplog.text
    assert "step 1/4" not in caplog.text  # SFT is not trained again
    metrics = _published(spec).meta["metrics"]
    assert metrics["steps"] == 4 and metrics["preference/steps"] == 2

"""Each cycle product is keyed by what it was built from (flywheel.loop.cycle_keys): the same
inputs reuse the published version; a changed seed file, spec section or parent version
rebuilds it with a new version that says what changed, or fails naming the change.

Checkpoints and eval reports here are published placeholder artifacts (the bookkeeping is
under test, not the model), as in tests/loop/test_cycles.py; eval and generation, which need
a model, are keyed in tests/loop/test_model_keys.py.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from flywheel.core import artifacts, keys
from flywheel.core import products as P
from flywheel.core.spec import load_spec
from flywheel.loop import cycles, promotion
from flywheel.loop.accept import accept_generations
from flywheel.loop.cycle_keys import check_seed_model, seed_fingerprint
from flywheel.loop.report import cycle_build_facts, lineage_lines
from tests.loop.test_accept import write_generations
from tests.loop.test_cycles import _accept, _publish_eval, _publish_model

SPEC = """
    name: keys-test
    data_dir: data
    catalog: catalog.duckdb
    sft:
      data: {kind: jsonl, path: seed.jsonl}
    eval:
      tasks: [{name: addition, kind: addition, num_examples: 5, min_digits: 3, max_digits: 3,
               width: 4}]
    acceptance:
      verifier: {kind: python, function: "keyverifier:judge"}
    cycles: {patience: 5, max_cycles: 9, gate: {metric: accuracy/addition}}
"""
VERIFIER = "def judge(prompt, completion, answer):\n    return {verdict}, 'refused'\n"


def _seed(tmp_path: Path, answer: str, n: int = 6) -> None:
    rows = [{"prompt": f"What is {i} + {i}?", "response": answer} for i in range(n)]
    (tmp_path / "seed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _spec(tmp_path: Path, *overrides: str):
    path = tmp_path / "flywheel.yaml"
    path.write_text(textwrap.dedent(SPEC))
    return load_spec(path, list(overrides))


@pytest.fixture
def spec(tmp_path: Path, monkeypatch):
    _seed(tmp_path, "wrong")
    (tmp_path / "keyverifier.py").write_text(VERIFIER.format(verdict="True"))
    monkeypatch.syspath_prepend(str(tmp_path))
    return _spec(tmp_path)


def _build(spec, cycle: int):
    return cycles.build_training_set(spec, cycle, cycles.cycle_inputs(spec, P.TRAINING_SET, cycle))


def _responses(shards) -> set[str]:
    df = shards.read()
    return set(df.filter(pl.col("origin") == "seed")["response"])


# -- training_set ---------------------------------------------------------------------------
def test_a_fixed_seed_file_rebuilds_cycle_0_and_cycle_1_replays_the_new_rows(
    spec, tmp_path: Path
) -> None:
    old0 = _build(spec, 0)
    assert _build(spec, 0).version == old0.version  # (a) the same seed data: reused
    _accept(spec, 0, 4)
    old1 = _build(spec, 1)
    assert _build(spec, 1).version == old1.version
    assert _responses(old1) == {"wrong"}

    _seed(tmp_path, "right")  # the user's fix: the same path, new content
    facts = {"cycle": 1, "chain": [], "eval_scores": {}, "decisions": []}
    shown = lineage_lines(facts | cycle_build_facts(spec, 1))  # flywheel lineage 1
    assert any(line.strip().startswith("STALE cycle 0's training set") for line in shown)
    assert any("seed data changed" in line for line in shown)
    # Cycle 1 must not replay cycle 0's old rows: it names the change and says what to do.
    with pytest.raises(keys.StaleError, match=r"seed data changed: sha256 \w+\.\. -> sha256"):
        _build(spec, 1)
    with pytest.raises(keys.StaleError, match="Rerun cycle 0 first"):
        _build(spec, 1)
    new0 = _build(spec, 0)  # (b) rerun cycle 0: a new version with the new rows
    assert new0.version != old0.version and _responses(new0) == {"right"}
    [change] = new0.manifest[keys.CHANGES]
    assert change.startswith("seed data changed: sha256 ")
    assert new0.manifest[keys.KEY]["data:seed data"] == seed_fingerprint(spec)
    assert cycle_build_facts(spec, 1)["stale"] == [
        f"replays cycle 0's training set {old0.version}, now {new0.version}"
    ]
    new1 = _build(spec, 1)  # its parent changed: rebuilt, replaying the current file only
    assert cycle_build_facts(spec, 1)["stale"] == []
    assert new1.version != old1.version
    assert _responses(new1) == {"right"} and new1.manifest["seed_rows"] == 6
    assert (
        f"input training_set/0 changed: {old0.version} -> {new0.version}"
        in (new1.manifest[keys.CHANGES])
    )


def test_a_moved_seed_file_with_the_same_content_is_reused(spec, tmp_path: Path) -> None:
    first = _build(spec, 0)
    (tmp_path / "elsewhere.jsonl").write_bytes((tmp_path / "seed.jsonl").read_bytes())
    moved = _spec(tmp_path, "sft.data.path=elsewhere.jsonl")
    assert _build(moved, 0).version == first.version


def test_cycle_1s_set_follows_its_spec_field_and_parent_versions_only(spec, tmp_path: Path) -> None:
    _build(spec, 0)
    _accept(spec, 0, 4)
    one = _build(spec, 1)
    unrelated = _spec(tmp_path, "cycles.gate.min_delta=0.5", "generation.samples_per_prompt=9")
    assert _build(unrelated, 1).version == one.version  # sections it does not read
    replay = _spec(tmp_path, "cycles.seed_replay=2")
    two = _build(replay, 1)
    assert two.version != one.version and two.manifest["seed_rows"] == 2
    assert any(c.startswith("spec cycles.seed_replay changed") for c in two.manifest[keys.CHANGES])
    _accept(spec, 0, 5)  # a new version of cycle 0's accepted set: a new parent input
    three = _build(replay, 1)
    assert three.version != two.version and three.manifest["generation_rows"] == 5
    assert any(
        c.startswith("input accepted_generations/0 changed") for c in three.manifest[keys.CHANGES]
    )


# -- cycle_checkpoint (cycle 0 adopts the seed model) ----------------------------------------
def test_cycle_0_refuses_a_seed_model_trained_on_other_seed_data(spec, tmp_path: Path) -> None:
    root = spec.product_dir(P.SFT)
    staging = artifacts.staging_dir(root)
    (staging / "model.safetensors").write_bytes(b"seed")
    trained_on = seed_fingerprint(spec).removeprefix("sha256:")
    model = artifacts.publish(root, staging, lineage={"data_fingerprint": trained_on})
    assert check_seed_model(spec, model) is model  # (a) trained on today's seed data
    _seed(tmp_path, "right")
    with pytest.raises(keys.StaleError, match=r"seed data changed: .*Re-train the seed model"):
        check_seed_model(spec, model)


# -- promoted_model ---------------------------------------------------------------------------
def _promote(spec, cycle: int):
    return promotion.promote(spec, cycle, cycles.cycle_inputs(spec, P.PROMOTED, cycle))


def test_a_decision_is_reused_redecided_or_refused_by_its_key(spec, tmp_path: Path) -> None:
    _publish_model(spec.product_dir(P.SFT), "seed")
    _build(spec, 0)
    _publish_eval(spec, 0, 0.1)
    first = _promote(spec, 0)
    assert _promote(spec, 0) == first  # (a) same inputs and gate: the recorded decision
    assert first.build_key["spec:cycles.gate"] and first.build_changes == []
    stricter = _spec(tmp_path, "cycles.gate.min_delta=0.2")
    again = _promote(stricter, 0)  # (b) the gate changed and nothing was decided after it
    assert again.decided_at > first.decided_at
    assert [c.split(":")[0] for c in again.build_changes] == ["spec cycles.gate changed"]
    assert promotion.decisions(spec) == [again]  # the catalog holds the key and the change

    _accept(spec, 0, 3)
    _build(spec, 1)
    _publish_model(cycles.checkpoint_root(spec, 1), "model-1")
    _publish_eval(spec, 1, 0.5)
    _promote(spec, 1)
    _publish_eval(spec, 0, 0.2)  # cycle 0 re-evaluated after cycle 1 was decided against it
    with pytest.raises(keys.StaleError, match=r"cycle 1 was already decided .*input cycle_eval"):
        _promote(stricter, 0)
    assert promotion.decisions(spec)[0] == again  # the decision later cycles built on stays


# -- accepted_generations ---------------------------------------------------------------------
def test_acceptance_is_redone_when_the_verifier_code_or_the_generations_change(
    spec, tmp_path: Path
) -> None:
    _build(spec, 0)
    write_generations(spec, 0, [("What is 7 + 7?", "14", ["14", "15"])])
    handed = cycles.cycle_inputs(spec, P.ACCEPTED, 0)
    first = accept_generations(spec, 0, handed)
    assert first.manifest["accepted"] == 1  # max_per_prompt 1: one of the two
    assert accept_generations(spec, 0, handed).version == first.version  # (a) reused
    (tmp_path / "keyverifier.py").write_text(VERIFIER.format(verdict="False"))
    sys.modules.pop("keyverifier", None)  # as a new run's process would import it afresh
    fixed = accept_generations(spec, 0, handed)  # (b) the verifier's source changed
    assert fixed.version != first.version and fixed.manifest["accepted"] == 0
    assert [c.split(":")[0] for c in fixed.manifest[keys.CHANGES]] == ["verifier source changed"]
    write_generations(spec, 0, [("What is 8 + 8?", "16", ["16"])])
    regenerated = accept_generations(spec, 0, cycles.cycle_inputs(spec, P.ACCEPTED, 0))
    assert regenerated.version != fixed.version
    assert any(
        c.startswith("input synthetic_generations changed")
        for c in regenerated.manifest[keys.CHANGES]
    )

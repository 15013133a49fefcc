"""Cycle bookkeeping without a model: training sets, promotion decisions, the loop's state,
the report and lineage. Checkpoints and eval reports are real published artifacts holding
placeholder files; what is under test is the bookkeeping, not the model."""

from __future__ import annotations

import hashlib
import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from flywheel.core import artifacts
from flywheel.core import products as P
from flywheel.core.catalog import Catalog
from flywheel.core.keys import StaleError
from flywheel.core.products import TRAINING_SET
from flywheel.core.shards import ShardWriter, read_current
from flywheel.core.spec import load_spec
from flywheel.loop import cycles, promotion, runs
from flywheel.loop.report import lineage, report_footer, report_rows

SPEC = """
    name: cycles-test
    data_dir: data
    catalog: catalog.duckdb
    sft:
      data: {kind: addition, num_examples: 20, min_digits: 1, max_digits: 2, width: 4}
    eval:
      tasks: [{name: addition, kind: addition, num_examples: 5, min_digits: 3, max_digits: 3,
               width: 4}]
    cycles: {patience: 2, max_cycles: 5, gate: {metric: accuracy/addition, min_delta: 0.01}}
"""


@pytest.fixture
def spec(tmp_path: Path):
    path = tmp_path / "flywheel.yaml"
    path.write_text(textwrap.dedent(SPEC))
    return load_spec(path)


def _publish_model(root: Path, tag: str) -> artifacts.Artifact:
    staging = artifacts.staging_dir(root)
    (staging / "model.safetensors").write_bytes(tag.encode())
    return artifacts.publish(root, staging, stage="test")


def _publish_eval(spec, cycle: int, accuracy: float) -> None:
    cand = promotion.candidate(spec, cycle)
    root = cycles.eval_root(spec, cycle)
    staging = artifacts.staging_dir(root)
    scores = {"checkpoint": cand.version, "accuracy/addition": accuracy}
    (staging / "scores.json").write_text(json.dumps(scores))
    artifacts.publish(root, staging, checkpoint=cand.version)


def _accept(spec, cycle: int, n: int, start: int = 0) -> None:
    rows = [
        {
            "generation_id": f"g{cycle}-{i}",
            "prompt_id": f"p{cycle}-{i}",
            "prompt": f"q{cycle}-{i}",
            "response": f"a{i}",
        }
        for i in range(start, start + n)
    ]
    with ShardWriter(cycles.accepted_root(spec, cycle)) as writer:
        writer.write(pl.DataFrame(rows))
        writer.commit(cycle=cycle)


def _build(spec, cycle: int):
    return cycles.build_training_set(spec, cycle, cycles.cycle_inputs(spec, TRAINING_SET, cycle))


def _promote(spec, cycle: int) -> promotion.Decision:
    return promotion.promote(spec, cycle, cycles.cycle_inputs(spec, P.PROMOTED, cycle))


def _run_cycle(spec, cycle: int, accuracy: float) -> promotion.Decision:
    _build(spec, cycle)
    if cycle > 0:
        _publish_model(cycles.checkpoint_root(spec, cycle), f"model-{cycle}")
    _publish_eval(spec, cycle, accuracy)
    return _promote(spec, cycle)


def test_training_sets_grow_from_the_seed_with_new_accepted_rows_only(spec) -> None:
    seed = _build(spec, 0)
    assert seed.num_rows == 20 and seed.manifest["parent_cycle"] is None
    with pytest.raises(FileNotFoundError, match="cycle 1 has no training set|cycle 1"):
        _build(spec, 2)
    with pytest.raises(cycles.NothingToTrain, match="nothing to retrain on"):
        _build(spec, 1)  # no accepted generation yet
    _accept(spec, 0, 7)
    assert cycles.new_accepted_rows(spec, 1) == 7
    one = _build(spec, 1)
    assert one.num_rows == 27 and one.manifest["new_rows"] == 7
    assert one.manifest["parent_version"] == seed.version
    accepted = read_current(cycles.accepted_root(spec, 0)).version
    assert one.inputs == {"training_set/0": seed.version, "accepted_generations/0": accepted}
    assert seed.inputs == {}  # cycle 0 reads the seed data, no product
    assert _build(spec, 1).version == one.version  # same inputs: reused
    df = one.read()
    assert df.filter(pl.col("origin") == "generation")["cycle_added"].unique().to_list() == [0]
    # Cycle 2 adds only what cycle 1 did not have: the same accepted rows never train twice.
    with pytest.raises(cycles.NothingToTrain):
        _build(spec, 2)
    _accept(spec, 1, 3)
    two = _build(spec, 2)
    assert two.num_rows == 30 and two.manifest["new_rows"] == 3
    ids = two.read()["generation_id"].drop_nulls()
    assert ids.n_unique() == ids.len() == 10
    counts = Catalog.open(spec.catalog).query(
        "SELECT cycle, rows FROM training_sets ORDER BY cycle"
    )
    assert counts.rows() == [(0, 20), (1, 27), (2, 30)]


def test_seed_replay_keeps_a_sample_of_the_seed_and_every_generation(tmp_path: Path) -> None:
    path = tmp_path / "flywheel.yaml"
    path.write_text(textwrap.dedent(SPEC).replace("cycles: {", "cycles: {seed_replay: 5, "))
    spec = load_spec(path)
    seed = set(_build(spec, 0).read()["prompt_id"])
    _accept(spec, 0, 7)
    one = _build(spec, 1)
    _accept(spec, 1, 3)
    two = _build(spec, 2).read()
    assert one.manifest["seed_rows"] == 5 and one.manifest["generation_rows"] == 7
    assert two.filter(pl.col("origin") == "seed").height == 5
    assert set(two.filter(pl.col("origin") == "seed")["prompt_id"]) <= seed
    assert two.filter(pl.col("origin") == "generation").height == 10


def test_promotion_only_when_the_candidate_beats_the_champion(spec) -> None:
    _publish_model(spec.product_dir("sft_checkpoint"), "seed")
    first = _run_cycle(spec, 0, 0.10)
    assert first.promoted and first.reason == "first champion"
    _accept(spec, 0, 5)
    better = _run_cycle(spec, 1, 0.30)
    assert better.promoted and promotion.champion(spec).cycle == 1
    assert (better.champion_before, better.champion_value) == (first.candidate, 0.10)
    _accept(spec, 1, 5)
    tie = _run_cycle(spec, 2, 0.305)  # within min_delta 0.01: not better
    assert not tie.promoted and promotion.champion(spec).cycle == 1
    assert tie.reason == "accuracy/addition 0.3050 <= champion 0.3000 + 0.01"
    assert _promote(spec, 2) == tie  # deciding again returns the recorded decision
    # Cycle 2 was trained from (and generates with) the champion cycle 1 left, for good.
    assert promotion.champion_after(spec, 1).version == better.candidate
    assert promotion.champion_after(spec, 2).version == better.candidate
    assert promotion.champion_after(spec, 0).version == first.candidate
    assert not promotion.loop_state(spec).stopped
    _accept(spec, 2, 5)
    worse = _run_cycle(spec, 3, 0.20)
    assert not worse.promoted
    state = promotion.loop_state(spec)
    assert state.stopped and "2 cycle(s) in a row without promotion" in state.reason
    assert all(check.passed for check in promotion.champion_checks(spec))
    # The catalog is the record: the champion is derived from the decisions, no file holds it.
    assert promotion.decisions(spec) == [first, better, tie, worse]
    assert not list(cycles.promoted_dir(spec).glob("*.json"))
    rows = report_rows(spec)
    assert [r["promoted"] for r in rows] == [True, True, False, False]
    assert [r["accuracy/addition"] for r in rows] == [0.10, 0.30, 0.305, 0.20]
    assert rows[1]["new_rows"] == 5 and rows[2]["train_rows"] == 30
    decided = Catalog.open(spec.catalog).query("SELECT cycle, promoted FROM cycles ORDER BY cycle")
    assert decided.rows() == [(0, True), (1, True), (2, False), (3, False)]


def test_a_new_candidate_for_a_decided_cycle_faces_the_champion_before_it(spec) -> None:
    _publish_model(spec.product_dir("sft_checkpoint"), "seed")
    first = _run_cycle(spec, 0, 0.10)
    _accept(spec, 0, 5)
    old = _run_cycle(spec, 1, 0.30)
    # Cycle 1 retrained (e.g. its training set changed): the new candidate is judged against
    # the champion cycle 0 left, not against cycle 1's own replaced candidate.
    _publish_model(cycles.checkpoint_root(spec, 1), "model-1b")
    _publish_eval(spec, 1, 0.20)
    new = _promote(spec, 1)
    assert new.candidate != old.candidate and new.promoted
    assert (new.champion_before, new.champion_value) == (first.candidate, 0.10)
    assert promotion.champion(spec) == new == promotion.decisions(spec)[-1]
    assert promotion.champion_after(spec, 1).version == new.candidate


def test_promotion_refuses_a_stale_eval_or_a_skipped_cycle(spec) -> None:
    _publish_model(spec.product_dir("sft_checkpoint"), "seed")
    _build(spec, 0)
    _publish_eval(spec, 0, 0.1)
    _publish_model(spec.product_dir("sft_checkpoint"), "seed-2")  # eval now scores an old one
    with pytest.raises(RuntimeError, match="evaluate the candidate first"):
        _promote(spec, 0)
    _publish_eval(spec, 0, 0.1)
    _promote(spec, 0)
    _publish_model(cycles.checkpoint_root(spec, 2), "two")
    _publish_eval(spec, 2, 0.5)
    with pytest.raises(RuntimeError, match="cycle 1 has no promotion decision"):
        _promote(spec, 2)


def test_a_corrupt_champion_fails_its_check(spec) -> None:
    _publish_model(spec.product_dir("sft_checkpoint"), "seed")
    _run_cycle(spec, 0, 0.1)
    path = Path(promotion.champion(spec).candidate_path) / "model.safetensors"
    path.write_bytes(b"tampered")
    checks = {check.name: check.passed for check in promotion.champion_checks(spec)}
    assert checks == {"champion_verified": False, "champion_is_best": True}


def test_lineage_of_a_cycle_names_its_training_set_and_decision(spec) -> None:
    seed = _publish_model(spec.product_dir("sft_checkpoint"), "seed")
    Catalog.open(spec.catalog).record_checkpoint(seed.version, "sft", seed.path, None, {}, {}, "f")
    _run_cycle(spec, 0, 0.1)
    facts = lineage(spec, "cycle:0")
    assert facts["cycle"] == 0
    assert facts["training_set"] == read_current(cycles.training_set_root(spec, 0)).version
    assert facts["decisions"][0]["promoted"]


def test_two_runs_of_one_cycle_at_once_build_and_decide_once(spec) -> None:
    from concurrent.futures import ThreadPoolExecutor

    _publish_model(spec.product_dir("sft_checkpoint"), "seed")
    with ThreadPoolExecutor(4) as pool:
        sets = list(pool.map(lambda _: _build(spec, 0).version, range(4)))
    assert len(set(sets)) == 1  # the later builders waited and reused the first one's set
    _publish_eval(spec, 0, 0.2)
    with ThreadPoolExecutor(4) as pool:
        decided = list(pool.map(lambda _: _promote(spec, 0), range(4)))
    assert all(d == decided[0] for d in decided) and decided[0].promoted
    assert len(promotion.decisions(spec)) == 1
    rows = Catalog.open(spec.catalog).query("SELECT count(*) AS n FROM training_sets")["n"][0]
    assert rows == 1


def test_report_before_any_cycle_is_empty(spec) -> None:
    # Regression: listing cycles/ read the directory before checking that it exists.
    assert report_rows(spec) == []


def test_the_reports_method_is_the_one_the_checkpoint_records(spec) -> None:
    # Regression: the column read a top-level "method" no checkpoint has, so every cycle
    # showed "sft", a DPO or PPO cycle too; retraining records it in the lineage.
    _publish_model(spec.product_dir("sft_checkpoint"), "seed")
    _run_cycle(spec, 0, 0.1)
    for cycle, method in [(1, "sft+dpo"), (2, None)]:
        _accept(spec, cycle - 1, 2)
        _build(spec, cycle)
        root = cycles.checkpoint_root(spec, cycle)
        staging = artifacts.staging_dir(root)
        (staging / "model.safetensors").write_bytes(b"m")
        lineage = {"cycle": cycle} | ({"method": method} if method else {})
        artifacts.publish(root, staging, stage="cycle", lineage=lineage)
    assert [r["method"] for r in report_rows(spec)] == ["seed sft", "sft+dpo", "sft"]


def test_a_later_success_resolves_a_failure_and_history_stays(spec) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    runs.record_failure(spec, "1", "run-a", "vLLM is not installed", t0)
    runs.record_failure(spec, None, "run-x", "no partition", t0)
    runs.record_success(spec, "0", "run-b", t0 + timedelta(minutes=1))  # another cycle
    assert [f.run_id for f in runs.failures(spec)] == ["run-a", "run-x"]
    assert "failed: cycle 1 run run-a: vLLM is not installed" in report_footer(spec)
    runs.record_success(spec, 1, "run-c", t0 + timedelta(minutes=2))
    runs.record_failure(spec, 1, "run-d", "later", t0 + timedelta(minutes=3))
    # run-c resolved run-a, not run-d, which failed after it; a re-recorded run is replaced.
    runs.record_failure(spec, 1, "run-d", "later, again", t0 + timedelta(minutes=3))
    [d, x] = sorted(runs.failures(spec), key=lambda f: f.run_id)
    assert (d.run_id, d.cycle, d.message, x.cycle) == ("run-d", 1, "later, again", None)
    assert d.finished_at == t0 + timedelta(minutes=3)
    assert not any("run-a" in line for line in report_footer(spec))
    history = runs.failures(spec, include_resolved=True)
    assert [f.run_id for f in history] == ["run-a", "run-x", "run-d"]
    counts = Catalog.open(spec.catalog).query("SELECT status, count(*) FROM cycle_runs GROUP BY 1")
    assert dict(counts.rows()) == {"failed": 3, "succeeded": 2}


def test_a_decision_records_what_it_read_and_refuses_a_stale_champion(spec) -> None:
    seed = _publish_model(spec.product_dir("sft_checkpoint"), "seed")
    _build(spec, 0)
    _publish_eval(spec, 0, 0.1)
    handed = cycles.cycle_inputs(spec, P.PROMOTED, 0)
    with pytest.raises(P.InputError, match="promoted_model reads .*missing cycle_eval_scores"):
        promotion.promote(spec, 0, {P.CYCLE_CHECKPOINT: seed})
    first = promotion.promote(spec, 0, handed)
    report = artifacts.read_current(cycles.eval_root(spec, 0)).version
    assert first.inputs == {P.CYCLE_EVAL: report, P.CYCLE_CHECKPOINT: seed.version}
    assert promotion.decisions(spec) == [first]  # the catalog row holds them
    _accept(spec, 0, 5)
    _build(spec, 1)
    _publish_model(cycles.checkpoint_root(spec, 1), "model-1")
    _publish_eval(spec, 1, 0.3)
    one = cycles.cycle_inputs(spec, P.PROMOTED, 1)
    assert P.versions(one)["promoted_model/0"] == seed.version  # the champion before
    # Cycle 0 decided again for a new seed model after cycle 1's inputs were resolved:
    # the champion cycle 1 was handed is no longer the one it must beat.
    _publish_model(spec.product_dir("sft_checkpoint"), "seed-2")
    _publish_eval(spec, 0, 0.1)
    _promote(spec, 0)
    with pytest.raises(RuntimeError, match="handed champion .* resolve its inputs again"):
        promotion.promote(spec, 1, one)
    decided = _promote(spec, 1)
    assert decided.inputs["promoted_model/0"] == promotion.champion_after(spec, 0).version
    assert decided.inputs["promoted_model/0"] != seed.version


SYSTEM = {"role": "system", "content": "Answer briefly."}
SEED_RECORDS = [
    {
        "messages": [
            SYSTEM,
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hi."},
        ]
    },
    {
        "messages": [
            SYSTEM,
            {"role": "user", "content": "What is 1 + 1?"},
            {"role": "assistant", "content": "2"},
            {"role": "user", "content": "And 2 + 2?"},
            {"role": "assistant", "content": "4"},
        ]
    },
    {"prompt": "Say yes", "response": "yes"},
    {"messages": [SYSTEM, {"role": "user", "content": "unanswered"}]},  # quarantined
]


def test_seed_conversations_train_every_cycle_as_the_seed_sft_read_them(tmp_path: Path) -> None:
    """System turns and earlier turns of the seed SFT data reach cycle 0's training set, and
    its rows become exactly the seed SFT's examples again; accepted rows keep the conversation
    they continued."""
    from flywheel.core import chat
    from flywheel.loop.retrain import load_training_set
    from flywheel.train.sft_data import load_sft_data

    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SEED_RECORDS))
    path = tmp_path / "flywheel.yaml"
    path.write_text(
        textwrap.dedent(SPEC).replace(
            "{kind: addition, num_examples: 20,", "{kind: jsonl, path: sft.jsonl,"
        )
    )
    spec = load_spec(path)
    seed = _build(spec, 0)
    df = seed.read()
    assert df["prompt"].to_list() == ["Hi", "And 2 + 2?", "Say yes"]  # the last user turn
    assert df["response"].to_list() == ["Hi.", "4", "yes"]
    assert chat.loads(df["messages"][1]) == SEED_RECORDS[1]["messages"]
    assert df["prompt_id"][1] == chat.conversation_id(SEED_RECORDS[1]["messages"][:-1])
    seed_sft = load_sft_data(spec.sft.data)
    assert [q["reason"] for q in seed_sft.quarantine] == ["does_not_end_with_assistant"]
    assert load_training_set(seed, 0).examples == seed_sft.examples

    continued = [SYSTEM, {"role": "user", "content": "What is 3 + 3?"}]
    rows = {"generation_id": "g1", "prompt_id": "p1", "prompt": "What is 3 + 3?"}
    with ShardWriter(cycles.accepted_root(spec, 0)) as writer:
        writer.write(pl.DataFrame([{**rows, "messages": chat.dumps(continued), "response": "6"}]))
        writer.commit(cycle=0)
    one = _build(spec, 1)
    trained = load_training_set(one, 1).examples
    assert trained[:3] == seed_sft.examples  # the seed replayed with its system turns
    assert trained[3] == {"messages": [*continued, {"role": "assistant", "content": "6"}]}


def test_builtin_seed_rows_are_single_turns_with_their_old_ids(spec) -> None:
    from flywheel.core import chat
    from flywheel.loop.retrain import load_training_set
    from flywheel.train.sft_data import load_sft_data

    seed = _build(spec, 0)
    df = seed.read()
    for row in df.iter_rows(named=True):
        assert row["prompt_id"] == hashlib.sha1(row["prompt"].encode()).hexdigest()[:16]
        assert chat.loads(row["messages"]) == [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["response"]},
        ]
    assert load_training_set(seed, 0).examples == load_sft_data(spec.sft.data).examples


def test_training_sets_written_before_conversations_still_load(spec) -> None:
    """A set without the messages column (older runs) reads as prompt/response pairs."""
    from flywheel.loop.retrain import load_training_set

    old = pl.DataFrame(
        {"prompt_id": ["p"], "prompt": ["q"], "response": ["a"], "origin": ["seed"],
         "cycle_added": [0], "generation_id": pl.Series([None], dtype=pl.String)}
    )  # fmt: skip
    with ShardWriter(cycles.training_set_root(spec, 0)) as writer:
        writer.write(old)
        shards = writer.commit(cycle=0)
    assert load_training_set(shards, 0).examples == [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    ]
    _accept(spec, 0, 2)
    # Built before build keys were kept, it cannot prove which seed data it holds: a later
    # cycle refuses to replay it and says how to fix that (flywheel.loop.cycle_keys).
    with pytest.raises(StaleError, match="Rerun cycle 0 first"):
        _build(spec, 1)
    _build(spec, 0)
    one = _build(spec, 1).read()
    assert one["messages"].null_count() == 0
    assert one.filter(pl.col("origin") == "generation").height == 2

"""Acceptance of generations: every generation accepted or rejected with a reason, the gates
in order, dedup across cycles and against the training set, idempotence, the catalog rows,
and the guard checks passing on a good set and failing on bad sets written directly.

Generations are written straight to shard sets with polars, as the generation step would
write them; no model is needed except for the reward-model verifier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flywheel.core import products as P
from flywheel.core.catalog import Catalog
from flywheel.core.shards import Built, ShardWriter, has_current, read_current
from flywheel.core.spec import Spec, parse_spec
from flywheel.loop.accept import accept_generations, accepted_checks
from flywheel.loop.accept_gates import repeated_line_fraction, text_hash
from flywheel.loop.cycles import (
    TRAINING_COLUMNS,
    accepted_root,
    cycle_inputs,
    generations_root,
    training_set_root,
)
from flywheel.loop.generate.generations import SCHEMA as GENERATION_SCHEMA
from tests.conftest import prose

EVAL = [("What is 2 + 2?", "4"), ("What is 3 + 3?", "6")]
GEN_SCHEMA = GENERATION_SCHEMA  # what flywheel.loop.generate writes
TRAIN_SCHEMA = TRAINING_COLUMNS


def make_spec(tmp_path: Path, **acceptance: Any) -> Spec:
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in EVAL))
    raw = {
        "data_dir": "data",
        "catalog": "catalog.duckdb",
        "eval": {
            "tasks": [{"name": "sums", "kind": "jsonl", "path": "eval.jsonl", "verifier": "exact"}]
        },
        "acceptance": acceptance,
    }
    return parse_spec(raw, tmp_path / "flywheel.yaml")


def write_generations(
    spec: Spec, cycle: int, prompts: list[tuple], messages: str | None = None
) -> pl.DataFrame:
    """``prompts``: (prompt, answer or None, [completions]); ids are c<cycle>-p<i>-s<j>;
    ``messages``: every row's conversation (JSON; None: none, the prompt alone)."""
    rows = [
        {
            "generation_id": f"c{cycle}-p{i}-s{j}",
            "cycle": cycle,
            "prompt_id": f"p{i}",
            "prompt": prompt,
            "messages": messages,
            "answer": answer,
            "sample_index": j,
            "greedy": j == 0,
            "completion": completion,
            "finish_reason": "stop",
            "checkpoint": f"ckpt-{cycle}",
            "backend": "fake",
            "temperature": 0.8,
            "top_p": 1.0,
            "top_k": 0,
            "max_new_tokens": 16,
            "seed": cycle,
        }
        for i, (prompt, answer, completions) in enumerate(prompts)
        for j, completion in enumerate(completions)
    ]
    df = pl.DataFrame(rows, schema=GEN_SCHEMA)
    with ShardWriter(generations_root(spec, cycle)) as writer:
        writer.write(df)
        writer.commit(cycle=cycle)
    if not has_current(training_set_root(spec, cycle)):  # acceptance reads the cycle's set
        write_set(training_set_root(spec, cycle), training_rows([]))
    return df


def _accept(spec: Spec, cycle: int) -> Built:
    """Accept cycle ``cycle``'s generations, handed its current inputs."""
    return accept_generations(spec, cycle, cycle_inputs(spec, P.ACCEPTED, cycle))


def write_set(root: Path, df: pl.DataFrame) -> None:
    with ShardWriter(root) as writer:
        writer.write(df)
        writer.commit()


def training_rows(pairs: list[tuple[str, str]], generation_ids: list[str | None] | None = None):
    ids = generation_ids or [None] * len(pairs)
    return pl.DataFrame(
        [
            {
                "prompt_id": f"t{i}",
                "prompt": p,
                "response": r,
                "cycle_added": 0,
                "origin": "seed" if g is None else "generation",
                "generation_id": g,
            }
            for i, ((p, r), g) in enumerate(zip(pairs, ids, strict=True))
        ],
        schema=TRAIN_SCHEMA,
    )


def reasons(spec: Spec, cycle: int) -> dict[str, str | None]:
    """generation_id -> reason (None: accepted), from the committed set; each id once."""
    shards = read_current(accepted_root(spec, cycle))
    accepted, rejected = shards.read(), shards.aux("rejected")
    ids = accepted["generation_id"].to_list() + rejected["generation_id"].to_list()
    assert len(ids) == len(set(ids))
    out = dict.fromkeys(accepted["generation_id"].to_list())
    out.update(zip(rejected["generation_id"], rejected["reason"], strict=True))
    return out


def test_every_generation_accepted_or_rejected_with_its_reason(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, verifier={"kind": "exact"}, filters={"max_chars": 10})
    gens = write_generations(
        spec,
        1,
        [
            ("What is 7 + 12?", "19", ["19", "18", "19", " 19 ", "20"]),  # p0: dups, wrong ones
            ("What is 2 + 2?", "4", ["4", "5"]),  # p1: an eval prompt
            ("Spell 'a' ten times", "a" * 11, ["a" * 11]),  # p2: correct but too long
            ("Name a colour", None, ["red"]),  # p3: nothing to check against
            ("What is 1 + 1?", "2", ["3"]),  # p4: only wrong answers
        ],
    )
    result = _accept(spec, 1)
    assert not result.reused
    got = reasons(spec, 1)
    assert set(got) == set(gens["generation_id"])  # accepted + rejected = generations
    assert got == {
        "c1-p0-s0": None,
        "c1-p0-s1": "incorrect",
        "c1-p0-s2": "duplicate_in_cycle",
        "c1-p0-s3": "duplicate_in_cycle",
        "c1-p0-s4": "incorrect",
        "c1-p1-s0": "eval_prompt",
        "c1-p1-s1": "incorrect",
        "c1-p2-s0": "filter:max_chars: 11 > 10",
        "c1-p3-s0": "no_reference",
        "c1-p4-s0": "incorrect",
    }
    accepted = result.shardset.read()
    assert accepted.columns == [*gens.columns, "response", "verifier", "score", "text_hash"]
    assert accepted.row(0, named=True) | {"text_hash": None} == {
        **gens.row(0, named=True),
        "response": "19",
        "verifier": "exact",
        "score": None,
        "text_hash": None,
    }
    rejected = result.shardset.aux("rejected")
    assert rejected.columns == [*gens.columns, "verifier", "score", "reason"]
    m = result.manifest
    assert (m["generations"], m["accepted"], m["rejected"]) == (10, 1, 9)
    assert m["reasons"] == {
        "duplicate_in_cycle": 2,
        "eval_prompt": 1,
        "filter:max_chars": 1,
        "incorrect": 4,
        "no_reference": 1,
    }
    assert (m["prompts"], m["prompts_with_accepted"], m["accept_rate"]) == (5, 1, 0.1)
    assert m["label_precision"] == 1.0 and m["acceptance"]["filters"]["max_chars"] == 10
    assert result.metadata["rejected/incorrect"] == 4 and result.metadata["verifier"] == "exact"
    # DPO pairs: the accepted "19" against each distinct wrong answer of the same prompt.
    pairs = result.shardset.aux("preference_pairs")
    assert pairs.sort("rejected").select(
        "chosen", "rejected", "rejected_generation_id", "chosen_generation_id", "cycle"
    ).rows() == [
        ("19", "18", "c1-p0-s1", "c1-p0-s0", 1),
        ("19", "20", "c1-p0-s4", "c1-p0-s0", 1),
    ]
    assert m["preference_pairs"] == 2


def test_accepted_rows_and_pairs_keep_the_conversation(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, verifier={"kind": "exact"})
    conversation = json.dumps(
        [{"role": "system", "content": "Digits."}, {"role": "user", "content": "What is 7 + 12?"}]
    )
    write_generations(spec, 1, [("What is 7 + 12?", "19", ["19", "18"])], conversation)
    result = _accept(spec, 1)
    assert result.shardset.read()["messages"].to_list() == [conversation]
    assert result.shardset.aux("preference_pairs")["messages"].to_list() == [conversation]


def test_catalog_records_every_decision_and_reaccepting_replaces_them(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, verifier={"kind": "numeric"})
    write_generations(spec, 1, [("What is 7 + 12?", "19", ["19", "It is 19.", "7"])])
    first = _accept(spec, 1)
    cat = Catalog.open(spec.catalog)
    rows = cat.query("SELECT * FROM generations ORDER BY generation_id").rows(named=True)
    assert [(r["generation_id"], r["status"], r["reason"]) for r in rows] == [
        ("c1-p0-s0", "accepted", None),
        ("c1-p0-s1", "rejected", "over_max_per_prompt"),  # correct, but one per prompt
        ("c1-p0-s2", "rejected", "incorrect"),
    ]
    assert {(r["cycle"], r["prompt_id"], r["checkpoint"], r["accepted_version"]) for r in rows} == {
        (1, "p0", "ckpt-1", first.version)
    }
    # Idempotent: same generations and settings -> the same set, nothing rewritten.
    again = _accept(spec, 1)
    assert again.reused and again.version == first.version
    assert again.metadata == first.metadata
    # New generations for the cycle: its catalog rows are replaced, not added to.
    write_generations(spec, 1, [("What is 7 + 12?", "19", ["19"])])
    third = _accept(spec, 1)
    assert not third.reused and third.version != first.version
    rows = cat.query("SELECT generation_id, accepted_version FROM generations").rows()
    assert rows == [("c1-p0-s0", third.version)]


def test_changed_settings_reaccept(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path, verifier={"kind": "python", "function": "tests.loop.test_accept:always"}
    )
    write_generations(spec, 1, [("Say a word", None, ["cat", "dog", "cow"])])
    assert _accept(spec, 1).manifest["accepted"] == 1  # max_per_prompt 1
    spec.acceptance.max_per_prompt = 2
    result = _accept(spec, 1)
    assert not result.reused and result.manifest["accepted"] == 2


def always(prompt: str, completion: str, answer: str | None) -> bool:
    return True


def explodes(prompt: str, completion: str, answer: str | None) -> bool:
    if completion == "boom":
        raise RuntimeError("cannot judge boom")
    return completion != "bad"


def test_max_per_prompt_counts_distinct_survivors(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        max_per_prompt=2,
        verifier={"kind": "python", "function": "tests.loop.test_accept:explodes"},
    )
    write_set(training_set_root(spec, 1), training_rows([("Name an animal", "cat")]))
    write_generations(
        spec,
        1,
        [
            ("Name an animal", None, ["cat", "Dog", "dog", "boom", "bad", "cow", "emu"]),
        ],
    )
    _accept(spec, 1)
    got = reasons(spec, 1)
    # "cat" is in the training set and "dog" repeats "Dog" (case and spacing are normalized):
    # neither takes one of the two places, so "Dog" and "cow" are accepted.
    assert got == {
        "c1-p0-s0": "duplicate_of_training_set",
        "c1-p0-s1": None,
        "c1-p0-s2": "duplicate_in_cycle",
        "c1-p0-s3": "verifier_error: RuntimeError: cannot judge boom",
        "c1-p0-s4": "incorrect",
        "c1-p0-s5": None,
        "c1-p0-s6": "over_max_per_prompt",
    }
    manifest = read_current(accepted_root(spec, 1)).manifest
    assert manifest["reasons"]["verifier_error"] == 1
    assert "label_precision" not in {k for k, v in manifest.items() if v is not None}
    # A verifier error says nothing about the text: only "bad" is a rejected side.
    pairs = read_current(accepted_root(spec, 1)).aux("preference_pairs")
    assert sorted(pairs.select("chosen", "rejected").rows()) == [("Dog", "bad"), ("cow", "bad")]


def test_dedup_against_earlier_cycles_and_the_training_set(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, verifier={"kind": "exact"})
    write_generations(spec, 0, [("What is 1 + 1?", "2", ["2"])])
    _accept(spec, 0)
    # Cycle 1's training set: a seed row, and a row made from cycle 1's own generation,
    # which must not count as earlier data (it is this set's row, not a prior one).
    training = training_rows(
        [("What is 5 + 5?", "10"), ("What is 9 + 9?", "18")], [None, "c1-p2-s0"]
    )
    write_set(training_set_root(spec, 1), training)
    write_generations(
        spec,
        1,
        [
            ("What is 1 + 1?", "2", ["2"]),
            ("What is 5 + 5?", "10", [" 10"]),
            ("What is 9 + 9?", "18", ["18"]),
        ],
    )
    _accept(spec, 1)
    assert reasons(spec, 1) == {
        "c1-p0-s0": "duplicate_of_accepted",
        "c1-p1-s0": "duplicate_of_training_set",
        "c1-p2-s0": None,
    }
    checks = {c.name: c for c in accepted_checks(spec, 1)}
    assert all(c.passed for c in checks.values()), checks
    accepted = read_current(accepted_root(spec, 1))
    read = {
        "synthetic_generations": read_current(generations_root(spec, 1)).version,
        "training_set": read_current(training_set_root(spec, 1)).version,
        "accepted_generations/0": read_current(accepted_root(spec, 0)).version,
    }
    assert accepted.inputs == read  # the versions it read, as the product graph names them
    assert accepted.manifest["build_key"]["input:training_set"] == f"1/{read['training_set']}"


def test_self_consistency_and_label_precision(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, verifier={"kind": "self_consistency", "min_votes": 2})
    write_generations(
        spec,
        1,
        [
            ("What is 7 + 12?", "19", ["19", "19.0", "18"]),  # majority right
            ("What is 8 + 8?", "16", ["15", "15", "16"]),  # majority wrong: a wrong label
            ("What is 9 + 1?", "10", ["1", "2", "3"]),  # no majority
        ],
    )
    result = _accept(spec, 1)
    assert reasons(spec, 1) == {
        "c1-p0-s0": None,
        "c1-p0-s1": "duplicate_in_cycle",
        "c1-p0-s2": "not_majority",
        "c1-p1-s0": None,
        "c1-p1-s1": "duplicate_in_cycle",
        "c1-p1-s2": "not_majority",
        "c1-p2-s0": "no_majority",
        "c1-p2-s1": "no_majority",
        "c1-p2-s2": "no_majority",
    }
    assert result.manifest["label_precision"] == 0.5
    assert result.shardset.read()["score"].to_list() == pytest.approx([2 / 3, 2 / 3])
    pairs = result.shardset.aux("preference_pairs").sort("prompt_id")
    assert pairs.select("chosen", "rejected").rows() == [("19", "18"), ("15", "16")]


def test_reward_model_acceptance_keeps_scores(tmp_path: Path) -> None:
    from tests.loop.test_verifiers import build_reward_model, own_scores

    model = build_reward_model(tmp_path / "rm")
    spec = make_spec(tmp_path, verifier={"kind": "reward_model", "reward_model": "rm"})
    completions = ["Paris", "It is Paris.", "London", "no idea at all"]
    gens = write_generations(spec, 1, [("Capital of France?", None, completions)])
    scores = own_scores(model, gens["prompt"].to_list(), completions)
    ranked = sorted(scores)
    threshold = (ranked[1] + ranked[2]) / 2  # the two best pass, clear of float rounding
    spec.acceptance.verifier.threshold = threshold
    spec.acceptance.max_per_prompt = 4
    result = _accept(spec, 1)
    best = {f"c1-p0-s{i}" for i, s in enumerate(scores) if s >= threshold}
    got = reasons(spec, 1)
    assert {g for g, r in got.items() if r is None} == best
    assert {r for r in got.values() if r} == {"below_reward_threshold"}
    by_id = dict(zip(gens["generation_id"], scores, strict=True))
    accepted = result.shardset.read()
    assert accepted["score"].to_list() == pytest.approx(
        [by_id[g] for g in accepted["generation_id"]], abs=1e-5
    )
    assert result.shardset.aux("rejected")["score"].null_count() == 0
    assert result.manifest["preference_pairs"] == 4


def test_quality_filters_and_near_dedup(tmp_path: Path) -> None:
    text = prose(3)[2][:1500]
    words = text.split()
    near = " ".join([*words[:-1], "CHANGED"])  # one word of ~250 changed: Jaccard ~0.98
    spec = make_spec(
        tmp_path,
        near_dedup=True,
        max_per_prompt=5,
        verifier={"kind": "python", "function": "tests.loop.test_accept:always"},
        filters={"max_repeated_line_fraction": 0.3, "use_document_filters": True},
    )
    write_set(training_set_root(spec, 1), training_rows([("Write about Python", text)]))
    write_generations(
        spec,
        1,
        [
            ("Describe the language", None, [near, "line\nline\nline\nother", "too short", ""]),
            ("Describe it again", None, [prose(3)[1][:1500], prose(3)[1][:1490]]),
        ],
    )
    _accept(spec, 1)
    got = reasons(spec, 1)
    assert got["c1-p0-s0"] == "near_duplicate"  # of the training set, under another prompt
    assert got["c1-p0-s1"] == "filter:repeated_lines: 0.5 > 0.3"
    assert got["c1-p0-s2"].startswith("filter:gopher_quality: ")  # the document filters
    assert got["c1-p0-s3"] == "filter:min_chars: 0 < 1"
    assert (got["c1-p1-s0"], got["c1-p1-s1"]) == (None, "near_duplicate")  # within the cycle
    assert repeated_line_fraction("a\n\na\nb\n") == pytest.approx(1 / 3)


def test_bad_generation_sets_are_clear_errors(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing published"):
        _accept(spec, 1)
    df = write_generations(spec, 1, [("What is 1 + 1?", "2", ["2", "3"])])
    write_set(generations_root(spec, 1), df.drop("checkpoint"))
    with pytest.raises(ValueError, match=r"lack columns \['checkpoint'\]"):
        _accept(spec, 1)
    write_set(generations_root(spec, 1), df.with_columns(generation_id=pl.lit("same")))
    with pytest.raises(ValueError, match=r"repeat generation_id\(s\) \['same'\]"):
        _accept(spec, 1)


# -- guard checks: they pass on a good set and each fails on a bad one ---------------------
def _accepted(pairs: list[tuple[str, str]], cycle: int = 1) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "generation_id": [f"g{cycle}-{i}" for i in range(len(pairs))],
            "prompt_id": [f"p{i}" for i in range(len(pairs))],
            "prompt": [p for p, _ in pairs],
            "response": [r for _, r in pairs],
            "text_hash": [text_hash(p, r) for p, r in pairs],
        },
        schema={
            "generation_id": pl.String,
            "prompt_id": pl.String,
            "prompt": pl.String,
            "response": pl.String,
            "text_hash": pl.String,
        },
    )


def _failed(spec: Spec, cycle: int = 1) -> dict[str, dict]:
    return {c.name: c.metadata for c in accepted_checks(spec, cycle) if not c.passed}


def test_checks_pass_on_a_good_set_and_fail_on_bad_ones(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    root = accepted_root(spec, 1)
    write_set(root, _accepted([("What is 1 + 1?", "2"), ("What is 1 + 2?", "3")]))
    outcomes = accepted_checks(spec, 1)
    assert [(o.name, o.passed) for o in outcomes] == [
        ("not_empty", True),
        ("no_eval_prompts", True),
        ("no_duplicates", True),
    ]
    write_set(root, _accepted([]))
    assert set(_failed(spec)) == {"not_empty"}
    write_set(root, _accepted([("  What is 2 + 2? ", "4")]))
    failed = _failed(spec)
    assert set(failed) == {"no_eval_prompts"} and failed["no_eval_prompts"]["leaked"] == 1
    write_set(root, _accepted([("What is 1 + 1?", "2"), ("what is  1 + 1?", "2 ")]))
    assert _failed(spec)["no_duplicates"]["within_set"] == 1
    # Against an earlier cycle's accepted set, and against the training set.
    write_set(accepted_root(spec, 0), _accepted([("What is 1 + 1?", "2")], cycle=0))
    write_set(root, _accepted([("What is 1 + 1?", "2")]))
    assert _failed(spec)["no_duplicates"]["of_earlier_accepted"] == 1
    write_set(training_set_root(spec, 1), training_rows([("What is 1 + 2?", "3")]))
    write_set(root, _accepted([("What is 1 + 2?", "3")]))
    failed = _failed(spec)["no_duplicates"]
    assert (failed["of_training_set"], failed["examples"]) == (1, ["What is 1 + 2?"])

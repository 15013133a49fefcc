"""A vision cycle with ``cycles.preference: dpo``: acceptance pairs an accepted and a refused
answer to the same image, and retraining runs SFT then VLM DPO on those pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flywheel.core import products as P
from flywheel.core.report import Reporter
from flywheel.core.spec import SpecError, load_spec
from flywheel.loop import cycles
from flywheel.loop.promotion import promote
from tests.loop.vision.conftest import vision_spec
from tests.loop.vision.test_seed import _curate

DPO = [
    "cycles.preference=dpo",
    "cycles.preference_train.steps=4",
    "cycles.preference_train.lr=0.003",
    "cycles.preference_train.warmup_steps=0",
    "cycles.preference_train.max_length=64",
    "sft.log_every=1",  # every DPO step logged: the first and last margins are the run's
]


def _right_then_wrong(
    model: Any, processor: Any, problems: list[dict[str, Any]], n: int, *_: Any
) -> list[list[str]]:
    """A scripted sampler in place of the barely trained seed's: per image one right count
    and one wrong one, so every image makes exactly one pair (the model's sampling is not
    what this test is about; tests/loop/vision/test_cycle.py samples for real)."""
    assert n == 2
    return [[p["answer"], str(int(p["answer"]) % 5 + 1)] for p in problems]


def test_vision_grpo_and_rloo_are_refused(
    tmp_path: Path, corpus_jsonl: Path, vision_tokenizer: Path
) -> None:
    path = vision_spec(tmp_path, corpus_jsonl, vision_tokenizer)
    assert load_spec(path, ["cycles.preference=dpo"]).cycles.preference == "dpo"
    for kind in ("grpo", "rloo"):
        with pytest.raises(SpecError, match=f"cycles.preference: '{kind}' is not wired"):
            load_spec(path, [f"cycles.preference={kind}"])


@pytest.mark.timeout(300)
def test_a_vision_cycle_with_dpo_pairs_answers_and_trains_on_them(
    tmp_path: Path, corpus_jsonl: Path, vision_tokenizer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flywheel.data.stages import run_dedup, run_filters, run_ingest
    from flywheel.loop.eval.scores import evaluate
    from flywheel.loop.vision import generate
    from flywheel.loop.vision.accept import accept_answers
    from flywheel.loop.vision.retrain import run_vision_retrain
    from flywheel.loop.vision.seed import run_seed_sft
    from flywheel.train.tokenizer import build_tokenizer

    spec = load_spec(vision_spec(tmp_path, corpus_jsonl, vision_tokenizer, count=12), DPO)
    _curate(spec)
    run_ingest(spec, "corpus")
    run_filters(spec, P.resolve_inputs(spec, P.FILTERED))
    run_dedup(spec, P.resolve_inputs(spec, P.DEDUPLICATED))
    build_tokenizer(spec, P.resolve_inputs(spec, P.TOKENIZER))
    monkeypatch.setattr(generate, "sample_answers", _right_then_wrong)
    with Reporter() as reporter:
        run_seed_sft(spec, reporter, P.resolve_inputs(spec, P.SFT))
        cycles.build_training_set(spec, 0, cycles.cycle_inputs(spec, P.TRAINING_SET, 0))
        evaluate(spec, cycles.cycle_inputs(spec, P.CYCLE_EVAL, 0), "sft", 0)
        promote(spec, 0, cycles.cycle_inputs(spec, P.PROMOTED, 0))
        generate.generate_answers(spec, 0, cycles.cycle_inputs(spec, P.GENERATIONS, 0), reporter)
        built = accept_answers(spec, 0, cycles.cycle_inputs(spec, P.ACCEPTED, 0))
        assert built.manifest["accepted"] == 6 and built.metadata["preference_pairs"] == 6
        pairs = built.shardset.aux("preference_pairs")
        accepted = built.shardset.read()
        # each pair: the accepted answer of one image against the refused one, same image
        assert set(pairs["chosen_generation_id"]) == set(accepted["generation_id"])
        assert (pairs["chosen"] != pairs["rejected"]).all()
        by_image = dict(zip(accepted["generation_id"], accepted["image_id"], strict=True))
        assert [by_image[g] for g in pairs["chosen_generation_id"]] == pairs["image_id"].to_list()
        assert all(i in m for i, m in zip(pairs["image_id"], pairs["messages"], strict=True))

        cycles.build_training_set(spec, 1, cycles.cycle_inputs(spec, P.TRAINING_SET, 1))
        handed = cycles.cycle_inputs(spec, P.CYCLE_CHECKPOINT, 1)
        assert P.of_cycle(P.ACCEPTED, 0) in handed  # DPO reads the earlier accepted sets
        done = run_vision_retrain(spec, reporter, 1, handed)
    meta = done["metadata"]
    assert meta["steps"] == 4 and meta["method"] == "sft+dpo"  # SFT ran first
    assert meta["preference"] == "dpo" and meta["preference/steps"] == 4
    assert meta["preference/examples"] == 6
    first, last = meta["preference/first/rewards/margins"], meta["preference/last/rewards/margins"]
    assert last > first, (first, last)  # the policy moved towards the accepted answers
    assert meta["preference/final_loss"] < meta["preference/first_loss"]
    json.dumps({k: v for k, v in meta.items() if k != "loss_table"})

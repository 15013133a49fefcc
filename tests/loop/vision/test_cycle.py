"""One vision cycle in process: the seed champion answers new images, the verifier accepts,
cycle 1's training set holds the answers with their images, retraining and eval run."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from flywheel.core import products as P
from flywheel.core.catalog import Catalog
from flywheel.core.report import Reporter
from flywheel.core.spec import load_spec
from flywheel.data.images.thumbnails import SAMPLES
from flywheel.loop import cycles
from flywheel.loop.promotion import promote
from flywheel.loop.report import generation_lineage
from tests.loop.vision.conftest import vision_spec
from tests.loop.vision.test_seed import _curate


@pytest.mark.timeout(300)
def test_a_vision_cycle_accepts_verified_answers_and_retrains(
    tmp_path: Path, corpus_jsonl: Path, vision_tokenizer: Path
) -> None:
    from flywheel.data.stages import run_dedup, run_filters, run_ingest
    from flywheel.loop.eval.scores import evaluate
    from flywheel.loop.vision.accept import accept_answers, answer_checks
    from flywheel.loop.vision.generate import generate_answers
    from flywheel.loop.vision.retrain import run_vision_retrain
    from flywheel.loop.vision.seed import run_seed_sft
    from flywheel.train.tokenizer import build_tokenizer

    spec = load_spec(vision_spec(tmp_path, corpus_jsonl, vision_tokenizer, count=48, steps=150))
    _curate(spec)
    run_ingest(spec, "corpus")
    run_filters(spec, P.resolve_inputs(spec, P.FILTERED))
    run_dedup(spec, P.resolve_inputs(spec, P.DEDUPLICATED))
    build_tokenizer(spec, P.resolve_inputs(spec, P.TOKENIZER))
    with Reporter() as reporter:
        run_seed_sft(spec, reporter, P.resolve_inputs(spec, P.SFT))
        cycles.build_training_set(spec, 0, cycles.cycle_inputs(spec, P.TRAINING_SET, 0))
        evaluate(spec, cycles.cycle_inputs(spec, P.CYCLE_EVAL, 0), "sft", 0)
        promote(spec, 0, cycles.cycle_inputs(spec, P.PROMOTED, 0))
        generate_answers(spec, 0, cycles.cycle_inputs(spec, P.GENERATIONS, 0), reporter)
        built = accept_answers(spec, 0, cycles.cycle_inputs(spec, P.ACCEPTED, 0))
        generated = built.manifest["accepted"] + built.manifest["rejected"]
        assert generated == 6 * 2  # images_per_cycle x samples_per_image
        shown = built.metadata["preview"].count("data:image/png;base64")
        assert shown == min(built.manifest["accepted"], SAMPLES)  # thumbnails of accepted rows
        sql = "SELECT status FROM generations WHERE cycle = 0"  # what flywheel lineage reads
        assert Catalog.open(spec.catalog).query(sql).height == generated
        checks = {c.name: c.passed for c in answer_checks(spec, 0)}
        assert checks["no_eval_prompts"] and checks["no_duplicates"]
        accepted = built.shardset.read()
        assert accepted.height >= 1, built.manifest["reasons"]  # 150 steps: some counts right
        one = cycles.build_training_set(spec, 1, cycles.cycle_inputs(spec, P.TRAINING_SET, 1))
        new = one.read().filter(pl.col("origin") == "generation")
        assert set(new["generation_id"]) == set(accepted["generation_id"])
        traced = generation_lineage(spec, accepted["generation_id"][0])  # flywheel lineage
        assert traced["generation"]["status"] == "accepted"
        assert [u["cycle"] for u in traced["in_training_sets"]] == [1]
        assert all('"image_id"' in m for m in new["messages"])  # the image travels with it
        done = run_vision_retrain(
            spec, reporter, 1, cycles.cycle_inputs(spec, P.CYCLE_CHECKPOINT, 1)
        )
        assert done["metadata"]["steps"] == 4
        evaluate(spec, cycles.cycle_inputs(spec, P.CYCLE_EVAL, 1), "sft", 1)
        decision = promote(spec, 1, cycles.cycle_inputs(spec, P.PROMOTED, 1))
        assert decision.metric == "vision/hard/accuracy"

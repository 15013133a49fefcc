"""The vision loop's first stages in process: the built-in image source through the image
plane, the seed data (held-out images quarantined), the seed VLM SFT and its eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.core import products as P
from flywheel.core.report import Reporter
from flywheel.core.spec import load_spec
from flywheel.data.images.pipeline import run_image_curation, run_image_ingest
from flywheel.loop.vision.data import conversation_image, seed_data, text_turns
from tests.loop.vision.conftest import vision_spec


def _curate(spec) -> None:  # noqa: ANN001
    run_image_ingest(spec, "shapes")
    run_image_curation(spec, P.resolve_inputs(spec, P.CURATED_IMAGES))


def test_the_vision_graph_reads_images_not_pretraining(
    tmp_path: Path, corpus_jsonl: Path, vision_tokenizer: Path
) -> None:
    spec = load_spec(vision_spec(tmp_path, corpus_jsonl, vision_tokenizer))
    made = P.products(spec)
    assert P.PRETRAINED not in made and P.TOKENIZED not in made
    assert P.inputs(P.SFT, spec) == [P.TOKENIZER, P.CURATED_IMAGES]
    assert P.inputs(P.CYCLE_EVAL, spec) == [P.CYCLE_CHECKPOINT]


def test_seed_data_are_the_captioned_images_without_heldout_ones(
    tmp_path: Path, corpus_jsonl: Path, vision_tokenizer: Path
) -> None:
    spec = load_spec(vision_spec(tmp_path, corpus_jsonl, vision_tokenizer, count=12))
    _curate(spec)
    data = seed_data(spec)
    assert len(data.examples) == 12 and not data.quarantine
    messages = data.examples[0]["messages"]
    assert len(conversation_image(messages)) == 32  # the store's id
    assert text_turns(messages)[-1]["content"] in {"1", "2", "3"}
    # rendered with the held-out seed: the same pixels as the easy end's eval images
    held = vision_spec(tmp_path / "h", corpus_jsonl, vision_tokenizer, count=5, seed=1_000_003)
    spec = load_spec(held)
    _curate(spec)
    data = seed_data(spec)
    assert not data.examples
    assert {q["reason"] for q in data.quarantine} == {"eval_image"}


@pytest.mark.timeout(300)
def test_seed_sft_publishes_a_vlm_that_eval_scores(
    tmp_path: Path, corpus_jsonl: Path, vision_tokenizer: Path
) -> None:
    from flywheel.data.stages import run_dedup, run_filters, run_ingest
    from flywheel.loop.eval.scores import eval_inputs, evaluate
    from flywheel.loop.vision.seed import run_seed_sft
    from flywheel.train.tokenizer import build_tokenizer

    spec = load_spec(vision_spec(tmp_path, corpus_jsonl, vision_tokenizer))
    _curate(spec)
    run_ingest(spec, "corpus")  # the tokenizer product reads the text plane (path: copied)
    run_filters(spec, P.resolve_inputs(spec, P.FILTERED))
    run_dedup(spec, P.resolve_inputs(spec, P.DEDUPLICATED))
    build_tokenizer(spec, P.resolve_inputs(spec, P.TOKENIZER))
    with Reporter() as reporter:
        done = run_seed_sft(spec, reporter, P.resolve_inputs(spec, P.SFT))
        again = run_seed_sft(spec, reporter, P.resolve_inputs(spec, P.SFT))
    assert again["version"] == done["version"] and again["metadata"]["reused"]
    meta = done["metadata"]
    assert meta["steps"] == 6 and meta["examples"] == 24
    result = evaluate(spec, eval_inputs(spec, "sft"), "sft")
    scores = json.loads((Path(result["metadata"]["report"]) / "scores.json").read_text())
    for end in ("easy", "hard"):
        assert 0.0 <= scores[f"vision/{end}/accuracy"] <= 1.0

"""A tiny vision spec: rendered counting images, a local tokenizer, a tiny VLM."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_spec

TINY_VISION = """
        name: test-vision
        data_dir: data
        catalog: catalog.duckdb
        sources: [{{name: corpus, kind: jsonl, path: {corpus}}}]
        tokenizer: {{path: {tokenizer}}}
        model:
          config: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
                   num_attention_heads: 2, num_key_value_heads: 2}}
        images:
          sources: [{{name: shapes, kind: visual_counting, count: {count}, max_objects: 3,
                      seed: {seed}}}]
          filters: {{min_caption_chars: 1}}
          dedup: {{phash: false}}  # sparse shapes on white are pHash-close, not copies
        sft: {{steps: {steps}, micro_batch: 8, lr: 0.003, warmup_steps: 0, save_every: 100,
              max_length: 64}}
        vision:
          eval_examples: 8
          images_per_cycle: 6
          samples_per_image: 2
          easy: {{min_objects: 1, max_objects: 3}}
          hard: {{min_objects: 4, max_objects: 5}}
          prompts: {{min_objects: 1, max_objects: 5}}
        cycles:
          threshold_rows: 1
          max_cycles: 2
          patience: 5
          sensor_interval_s: 1
          gate: {{metric: vision/hard/accuracy}}
          train: {{steps: 4, warmup_steps: 0, save_every: 10}}
"""


@pytest.fixture(scope="session")
def vision_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-token BPE trained on the task's own chat text (seconds)."""
    from flywheel.data.visual import QUESTION
    from flywheel.train.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    texts = [
        f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n{n}<|im_end|>\n"
        for n in range(1, 17)
    ] * 20
    train_tokenizer(texts, vocab_size=300, min_frequency=2, out_dir=out)
    return out


def vision_spec(
    tmp_path: Path, corpus: Path, tokenizer: Path, count: int = 24, seed: int = 7, steps: int = 6
) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    body = TINY_VISION.format(
        corpus=corpus, tokenizer=tokenizer, count=count, seed=seed, steps=steps
    )
    return write_spec(tmp_path, body)

"""Shared fixtures: small real corpora and specs written into a temporary directory."""

from __future__ import annotations

import json
import os
import pydoc_data.topics
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOPICS = pydoc_data.topics.topics


def prose(n: int = 40) -> list[str]:
    """Real English prose: the longest Python documentation topics."""
    texts = sorted(TOPICS.values(), key=len, reverse=True)
    return [t for t in texts if len(t.split()) > 200][:n]


@pytest.fixture
def corpus_jsonl(tmp_path: Path) -> Path:
    """A JSONL corpus of real prose with planted exact and near duplicates and bad records."""
    docs = prose(30)
    rows = [{"id": f"doc{i}", "text": t} for i, t in enumerate(docs)]
    rows.append({"id": "exact0", "text": docs[0]})  # an exact copy
    words = docs[1].split()
    words[len(words) // 2] = "CHANGED"  # one word changed: a near duplicate
    rows.append({"id": "near1", "text": " ".join(words)})
    path = tmp_path / "corpus.jsonl"
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.write("{not json\n")
        f.write(json.dumps({"id": "empty", "text": "   "}) + "\n")
    return path


# The training plane at toy size: every stage runs in seconds on 2 CPU cores.
TINY_TRAINING = """
        tokenizer: {vocab_size: 400}
        packing: {seq_len: 64, shard_rows: 256}
        model:
          config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
                   num_attention_heads: 2, num_key_value_heads: 2}
        pretrain: {steps: 12, micro_batch: 4, warmup_steps: 2, save_every: 5, log_every: 2}
        sft:
          steps: 6
          micro_batch: 4
          warmup_steps: 1
          save_every: 3
          log_every: 1
          max_length: 64
          data: {kind: arithmetic, num_examples: 48}
        eval:
          perplexity_batches: 2
          micro_batch: 4
          tasks: [{name: arithmetic, kind: arithmetic, num_examples: 6, max_new_tokens: 4}]
"""


def write_spec(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "flywheel.yaml"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def small_spec(tmp_path: Path, corpus_jsonl: Path) -> Path:
    return write_spec(
        tmp_path,
        f"""
        name: test
        data_dir: data
        catalog: catalog.duckdb
        sources:
          - name: corpus
            kind: jsonl
            path: {corpus_jsonl.name}
        filters:
          gopher_quality:
            min_words: 20
        {TINY_TRAINING}
        """,
    )

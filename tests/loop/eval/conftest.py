"""Tiny real artifacts for SFT and eval tests: a published pre-trained checkpoint and dataset.

The "pre-trained" checkpoint is a randomly initialised 2-layer Llama with a BPE tokenizer
trained on arithmetic chat text (flywheel.train.tokenizer), published with artifacts.publish the
way flywheel.train.pretrain publishes one. The builders are plain functions so that
tests/train/test_sft.py can import them too.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from flywheel.core import artifacts
from flywheel.core.shards import ShardSet, ShardWriter
from flywheel.data.arithmetic import arithmetic_examples

SEQ_LEN = 32
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}


def chat_texts(n: int = 600) -> list[str]:
    """Arithmetic conversations rendered as ChatML: the tokenizer's training text."""
    return [
        f"<|im_start|>user\n{p['prompt']}<|im_end|>\n<|im_start|>assistant\n{p['answer']}<|im_end|>\n"
        for p in arithmetic_examples(n, 20, seed=99)
    ]


def build_pretrained(data_dir: Path, seed: int = 0) -> artifacts.Artifact:
    """Publish a tiny random-init model + tokenizer under data_dir/pretrained_checkpoint."""
    from flywheel.core.settings.train import ModelSettings
    from flywheel.train.model import build_model
    from flywheel.train.tokenizer import train_tokenizer

    root = data_dir / "pretrained_checkpoint"
    staging = artifacts.staging_dir(root)
    tok = train_tokenizer(chat_texts(), vocab_size=300, min_frequency=2, out_dir=staging)
    special = {
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.bos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    model = build_model(ModelSettings(config=TINY_LLAMA), len(tok), 128, special, seed=seed)
    model.save_pretrained(staging)
    return artifacts.publish(root, staging, stage="pretrain", tokenizer_vocab=len(tok))


def build_tokenized(data_dir: Path, tokenizer_dir: Path, rows: int = 40) -> ShardSet:
    """A tokenized_dataset shard set whose held-out table packs arithmetic chat text."""
    from flywheel.train.packing import pack_documents
    from flywheel.train.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    texts = chat_texts(rows * 3)
    ids = [f"doc{i}" for i in range(len(texts))]
    packed = pack_documents(ids, texts, tok, SEQ_LEN, heldout_fraction=0.3)

    def frame(a: np.ndarray) -> pl.DataFrame:
        return pl.DataFrame({"input_ids": pl.Series(a, dtype=pl.Array(pl.Int32, SEQ_LEN))})

    with ShardWriter(data_dir / "tokenized_dataset", shard_rows=10_000) as writer:
        writer.write(frame(packed.rows["train"]))
        writer.write_aux("heldout", frame(packed.rows["heldout"]))
        return writer.commit(seq_len=SEQ_LEN)


def write_spec(directory: Path, body: str) -> Path:
    path = directory / "flywheel.yaml"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture(scope="session")
def pretrained_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding a published tiny checkpoint and tokenized dataset, built once."""
    data_dir = tmp_path_factory.mktemp("template") / "data"
    artifact = build_pretrained(data_dir)
    build_tokenized(data_dir, artifact.path)
    return data_dir


@pytest.fixture
def data_dir(tmp_path: Path, pretrained_template: Path) -> Path:
    """A private copy of the template data dir (tests publish into it)."""
    target = tmp_path / "data"
    shutil.copytree(pretrained_template, target)
    return target

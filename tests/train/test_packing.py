"""Packing: full rows only, EOS between documents, a stable held-out split, lineage spans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from transformers import PreTrainedTokenizerFast

from flywheel.core import products as P
from flywheel.core.artifacts import ArtifactError
from flywheel.core.catalog import Catalog
from flywheel.core.shards import read_current
from flywheel.core.spec import Spec, load_spec
from flywheel.data import stages as pipeline
from flywheel.train.loader import PackedStream, heldout_files, train_files
from flywheel.train.packing import (
    ROW_GROUP_ROWS,
    build_tokenized_dataset,
    encoder,
    pack_documents,
    split_of,
)
from flywheel.train.tokenizer import EOS, build_tokenizer, train_tokenizer

from .conftest import prose

SEQ = 64


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerFast:
    return train_tokenizer(prose(30), 500, 2, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def docs() -> tuple[list[str], list[str]]:
    texts = prose(40) + ["", "short", f"mentions {EOS} and <|im_start|> as plain text"]
    return [f"doc{i}" for i in range(len(texts))], texts


def _expected_stream(tok, ids, texts, split: str, fraction: float) -> np.ndarray:
    encode = encoder(tok)
    picked = [t for i, t in zip(ids, texts, strict=True) if split_of(i, fraction) == split]
    return np.array([x for ids_ in encode(picked) for x in [*ids_, tok.eos_token_id]], np.int32)


def test_rows_are_full_and_eos_separates_documents(tok, docs) -> None:
    ids, texts = docs
    result = pack_documents(ids, texts, tok, SEQ, heldout_fraction=0.2, batch_docs=7)
    for split, rows in result.rows.items():
        assert rows.dtype == np.int32 and rows.ndim == 2 and rows.shape[1] == SEQ
        expected = _expected_stream(tok, ids, texts, split, 0.2)
        # The rows are the split's stream of (document tokens, EOS)..., cut every SEQ tokens.
        assert np.array_equal(rows.reshape(-1), expected[: rows.size])
        n_docs = result.stats[f"{split}_docs"]
        assert (expected == tok.eos_token_id).sum() == n_docs  # literal "<|endoftext|>" is text
        assert result.stats[f"{split}_tokens"] == len(expected)


def test_tail_is_dropped_and_counted(tok, docs) -> None:
    ids, texts = docs
    stats = pack_documents(ids, texts, tok, SEQ, heldout_fraction=0.2).stats
    for split in ("train", "heldout"):
        tail = stats[f"{split}_tail_tokens_dropped"]
        assert 0 <= tail < SEQ
        assert stats[f"{split}_tokens"] == stats[f"{split}_rows"] * SEQ + tail
    assert stats["tail_tokens_dropped"] == sum(
        stats[f"{s}_tail_tokens_dropped"] for s in ("train", "heldout")
    )


def test_split_is_by_id_stable_and_disjoint(tok, docs) -> None:
    ids, texts = docs
    a = pack_documents(ids, texts, tok, SEQ, heldout_fraction=0.2, batch_docs=3).spans
    b = pack_documents(ids[::-1], texts[::-1], tok, SEQ, heldout_fraction=0.2).spans
    assert dict(zip(a["id"], a["split"], strict=True)) == dict(
        zip(b["id"], b["split"], strict=True)
    )
    train = set(a.filter(pl.col("split") == "train")["id"])
    heldout = set(a.filter(pl.col("split") == "heldout")["id"])
    assert train and heldout and not train & heldout and train | heldout == set(ids)
    share = np.mean([split_of(f"id-{i}", 0.1) == "heldout" for i in range(20_000)])
    assert 0.09 < share < 0.11
    assert all(split_of(f"id-{i}", 0.0) == "train" for i in range(1000))


def test_spans_account_for_every_token(tok, docs) -> None:
    ids, texts = docs
    result = pack_documents(ids, texts, tok, SEQ, heldout_fraction=0.2, batch_docs=5)
    for split in ("train", "heldout"):
        spans = result.spans.filter(pl.col("split") == split)
        assert spans["tokens"].sum() == result.stats[f"{split}_tokens"]  # tail included
        starts = np.concatenate([[0], np.cumsum(spans["tokens"].to_numpy())[:-1]])
        assert np.array_equal(spans["seq_start"].to_numpy(), starts // SEQ)
        ends = starts + spans["tokens"].to_numpy()
        assert np.array_equal(spans["seq_end"].to_numpy(), (ends - 1) // SEQ + 1)
        # Consecutive documents meet in one row at most: spans overlap by at most one row.
        assert (spans["seq_start"][1:].to_numpy() >= spans["seq_end"][:-1].to_numpy() - 1).all()


def _materialized(small_spec: Path, *overrides: str) -> Spec:
    base = [
        "tokenizer.vocab_size=400",
        "packing.seq_len=32",
        "packing.heldout_fraction=0.2",
        "packing.shard_rows=3000",
        "packing.batch_docs=4",
    ]
    spec = load_spec(small_spec, [*base, *overrides])
    pipeline.run_ingest(spec, "corpus")
    pipeline.run_filters(spec, P.resolve_inputs(spec, P.FILTERED))
    pipeline.run_dedup(spec, P.resolve_inputs(spec, P.DEDUPLICATED))
    build_tokenizer(spec, P.resolve_inputs(spec, P.TOKENIZER))
    return spec


def test_build_tokenized_dataset_end_to_end(small_spec: Path) -> None:
    spec = _materialized(small_spec)
    shards = build_tokenized_dataset(spec, P.resolve_inputs(spec, P.TOKENIZED))
    m = shards.manifest
    dedup = read_current(spec.product_dir(pipeline.DEDUPLICATED))
    assert m["input_version"] == dedup.version and m["seq_len"] == 32
    assert m["train_docs"] + m["heldout_docs"] == dedup.num_rows
    assert m["train_rows"] == shards.num_rows > 3000 and len(shards.files) == 2
    assert m["heldout_rows"] == shards.aux("heldout").height > 0
    assert m["packing"] == spec.packing.model_dump(mode="json")
    for f in [*shards.files, *heldout_files(shards)]:
        meta = pq.read_metadata(f)
        assert all(meta.row_group(i).num_rows <= ROW_GROUP_ROWS for i in range(meta.num_row_groups))

    spans = shards.aux("doc_spans")
    for split in ("train", "heldout"):
        part = spans.filter(pl.col("split") == split)
        assert part.height == m[f"{split}_docs"]
        tokens = m[f"{split}_rows"] * 32 + m[f"{split}_tail_tokens_dropped"]
        assert part["tokens"].sum() == m[f"{split}_tokens"] == tokens
    recorded = Catalog.open(spec.catalog).query(
        "SELECT count(*) AS n FROM tokenized_documents WHERE version = ?", [shards.version]
    )["n"][0]
    assert recorded == dedup.num_rows

    stream = PackedStream(train_files(shards), micro_batch=4, shuffle=False)
    first = next(iter(stream))["input_ids"]
    assert stream.seq_len == 32 and stream.num_rows == m["train_rows"]
    assert first.tolist() == shards.read().head(4)["input_ids"].to_list()


def test_build_is_idempotent_until_an_input_changes(small_spec: Path) -> None:
    spec = _materialized(small_spec)
    first = build_tokenized_dataset(spec, P.resolve_inputs(spec, P.TOKENIZED))
    assert (
        build_tokenized_dataset(spec, P.resolve_inputs(spec, P.TOKENIZED)).version == first.version
    )
    longer = load_spec(small_spec, ["tokenizer.vocab_size=400", "packing.seq_len=48"])
    second = build_tokenized_dataset(longer, P.resolve_inputs(longer, P.TOKENIZED))
    assert second.version != first.version and second.manifest["seq_len"] == 48
    retrained = load_spec(small_spec, ["tokenizer.vocab_size=450", "packing.seq_len=48"])
    tokenizer = build_tokenizer(retrained, P.resolve_inputs(retrained, P.TOKENIZER))
    third = build_tokenized_dataset(retrained, P.resolve_inputs(retrained, P.TOKENIZED))
    assert (
        third.manifest["tokenizer_version"]
        == tokenizer.version
        != second.manifest["tokenizer_version"]
    )


def test_build_needs_a_tokenizer(small_spec: Path) -> None:
    spec = load_spec(small_spec)
    pipeline.run_ingest(spec, "corpus")
    pipeline.run_filters(spec, P.resolve_inputs(spec, P.FILTERED))
    pipeline.run_dedup(spec, P.resolve_inputs(spec, P.DEDUPLICATED))
    with pytest.raises(ArtifactError, match="tokenizer"):
        build_tokenized_dataset(spec, P.resolve_inputs(spec, P.TOKENIZED))

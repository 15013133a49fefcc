"""Tokenize documents and pack them into fixed-length training sequences, with a held-out split.

    flywheel train pack [--spec SPEC]       # build_tokenized_dataset(spec, resolve_inputs(...))

Each document is tokenized without special tokens and followed by EOS; per split, the documents'
tokens form one stream that is cut into rows of exactly ``packing.seq_len`` tokens (int32), so
no padding is ever trained on and a row may hold the end of one document and the start of the
next (EOS marks the boundary; GPT-2/3 and Llama pre-training pack the same way). The final
partial row of each split is dropped and counted in ``tail_tokens_dropped``.

A document's split is a hash of its id, not of its position: the same document stays held out
when the corpus grows, so held-out perplexity is never measured on text trained on.

The product ``tokenized_dataset`` is a shard set (``flywheel.core.shards``): train rows as column
``input_ids`` (``Array(Int32, seq_len)``) in small row groups that ``flywheel.train.loader``
streams, an aux table ``heldout`` of the same shape, and an aux table ``doc_spans`` (lineage: which
rows each document's tokens landed in), also recorded in the catalog.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import polars as pl
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from flywheel.core import artifacts
from flywheel.core import products as P
from flywheel.core.catalog import Catalog
from flywheel.core.shards import ShardSet, ShardWriter, has_current, read_current
from flywheel.core.spec import Spec
from flywheel.train.tokenizer import load_tokenizer

PRODUCT = P.TOKENIZED
INPUT = P.DEDUPLICATED
TOKENIZER = P.TOKENIZER
SPLITS = ("train", "heldout")
# Rows per Parquet row group: the loader's unit of reading. 1024 rows of 256 int32 tokens is
# 1 MiB, so a loader holding two row groups stays small while reads stay sequential.
ROW_GROUP_ROWS = 1024
SPANS_SCHEMA = {
    "id": pl.String,
    "split": pl.String,
    "seq_start": pl.Int64,
    "seq_end": pl.Int64,
    "tokens": pl.Int64,
}

Encode = Callable[[list[str]], list[list[int]]]


def split_of(doc_id: str, heldout_fraction: float) -> str:
    """``heldout`` for a stable ``heldout_fraction`` of ids (a keyed hash, not Python's)."""
    digest = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return "heldout" if int.from_bytes(digest, "big") / 2**64 < heldout_fraction else "train"


def encoder(tokenizer: PreTrainedTokenizerBase) -> Encode:
    """Batch encoding with no special tokens added, and none recognised inside the text.

    A document that happens to contain the string ``<|endoftext|>`` (documentation about
    language models does) must not inject a real EOS, so special tokens are encoded as text.
    """
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a private copy
    backend.encode_special_tokens = True
    backend.no_truncation()
    backend.no_padding()

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]

    return encode


@dataclass
class _Stream:
    """One split's token stream: the not-yet-full row, and counts so far."""

    pending: np.ndarray
    tokens: int = 0  # tokens appended (the next document starts at this stream position)
    rows: int = 0  # full rows emitted
    docs: int = 0


@dataclass
class Packer:
    """Packs batches of documents into ``seq_len`` rows per split; memory is one batch."""

    encode: Encode
    eos_id: int
    seq_len: int
    heldout_fraction: float
    streams: dict[str, _Stream] = field(init=False)

    def __post_init__(self) -> None:
        self.streams = {s: _Stream(np.empty(0, np.int32)) for s in SPLITS}

    def add(
        self, ids: Sequence[str], texts: Sequence[str]
    ) -> tuple[dict[str, np.ndarray], pl.DataFrame]:
        """Full rows completed by this batch per split (``[n, seq_len]`` int32), and spans.

        Spans give, per document, the half-open row range ``[seq_start, seq_end)`` of its
        split that its tokens (EOS included) fall in; rows past the split's final row count
        are the dropped tail.
        """
        encoded = self.encode(list(texts))
        splits = [split_of(i, self.heldout_fraction) for i in ids]
        rows: dict[str, np.ndarray] = {}
        spans = []
        for split in SPLITS:
            picked = [k for k, s in enumerate(splits) if s == split]
            docs = [encoded[k] for k in picked]
            rows[split], starts, lengths = self._append(self.streams[split], docs)
            ends = starts + lengths
            spans.append(
                pl.DataFrame(
                    {
                        "id": [ids[k] for k in picked],
                        "split": [split] * len(picked),
                        "seq_start": starts // self.seq_len,
                        "seq_end": (ends - 1) // self.seq_len + 1,
                        "tokens": lengths,
                    },
                    schema=SPANS_SCHEMA,
                )
            )
        return rows, pl.concat(spans)

    def _append(
        self, stream: _Stream, docs: list[list[int]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lengths = np.array([len(d) + 1 for d in docs], dtype=np.int64)  # +1: the EOS
        starts = stream.tokens + np.cumsum(lengths) - lengths
        flat = np.fromiter(
            chain.from_iterable(chain(d, (self.eos_id,)) for d in docs),
            dtype=np.int32,
            count=int(lengths.sum()),
        )
        joined = np.concatenate([stream.pending, flat])
        full = len(joined) // self.seq_len * self.seq_len
        stream.pending = joined[full:].copy()
        stream.tokens += int(lengths.sum())
        stream.rows += full // self.seq_len
        stream.docs += len(docs)
        return joined[:full].reshape(-1, self.seq_len), starts, lengths

    def stats(self) -> dict[str, int]:
        """Per-split docs, tokens (all appended, tail included), rows, and tail dropped."""
        out: dict[str, int] = {}
        for split, s in self.streams.items():
            out[f"{split}_docs"] = s.docs
            out[f"{split}_tokens"] = s.tokens
            out[f"{split}_rows"] = s.rows
            out[f"{split}_tail_tokens_dropped"] = len(s.pending)
        out["tail_tokens_dropped"] = sum(len(s.pending) for s in self.streams.values())
        return out


@dataclass
class PackResult:
    rows: dict[str, np.ndarray]  # split -> [n, seq_len] int32
    spans: pl.DataFrame  # SPANS_SCHEMA
    stats: dict[str, int]


def pack_documents(
    ids: Sequence[str],
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    heldout_fraction: float,
    batch_docs: int = 2000,
) -> PackResult:
    """Pack documents in memory (``build_tokenized_dataset`` streams the same ``Packer``)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; packing needs a document separator")
    packer = Packer(encoder(tokenizer), tokenizer.eos_token_id, seq_len, heldout_fraction)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    spans = []
    for lo in range(0, len(ids), batch_docs):
        rows, batch_spans = packer.add(ids[lo : lo + batch_docs], texts[lo : lo + batch_docs])
        for split in SPLITS:
            parts[split].append(rows[split])
        spans.append(batch_spans)
    joined = {
        s: np.concatenate(parts[s]) if parts[s] else np.empty((0, seq_len), np.int32)
        for s in SPLITS
    }
    all_spans = pl.concat(spans) if spans else pl.DataFrame(schema=SPANS_SCHEMA)
    return PackResult(joined, all_spans, packer.stats())


def build_tokenized_dataset(
    spec: Spec, inputs: Mapping[str, ShardSet | artifacts.Artifact]
) -> ShardSet:
    """Pack the handed deduplicated shards with the handed tokenizer (``inputs``, as
    ``flywheel.core.products.resolve_inputs`` reads them); reuse the current set if unchanged."""
    P.check_inputs(PRODUCT, spec, inputs)
    settings = spec.packing
    docs, tok_artifact = inputs[INPUT], inputs[TOKENIZER]
    key = {
        "input_version": docs.version,
        "tokenizer_version": tok_artifact.version,
        "packing": settings.model_dump(mode="json"),
    }
    root = spec.product_dir(PRODUCT)
    if has_current(root):
        current = read_current(root)
        if all(current.manifest.get(k) == v for k, v in key.items()):
            return current
    tokenizer = load_tokenizer(tok_artifact.path)
    encode, eos_id = encoder(tokenizer), tokenizer.eos_token_id
    packer = Packer(encode, eos_id, settings.seq_len, settings.heldout_fraction)
    # Held-out rows (heldout_fraction of the data, 2% by default) and one span per document
    # are kept in memory to be written as single aux tables; train rows stream to shards.
    heldout: list[np.ndarray] = []
    spans: list[pl.DataFrame] = []
    writer = ShardWriter(root, settings.shard_rows, row_group_size=ROW_GROUP_ROWS)
    with writer:
        for batch in _doc_batches(docs, settings.batch_docs):
            rows, batch_spans = packer.add(batch["id"].to_list(), batch["text"].to_list())
            writer.write(_rows_frame(rows["train"], settings.seq_len))
            heldout.append(rows["heldout"])
            spans.append(batch_spans)
        all_spans = pl.concat(spans) if spans else pl.DataFrame(schema=SPANS_SCHEMA)
        writer.write_aux(
            "heldout", _rows_frame(_stack(heldout, settings.seq_len), settings.seq_len)
        )
        writer.write_aux("doc_spans", all_spans)
        shards = writer.commit(
            **key,
            **packer.stats(),
            seq_len=settings.seq_len,
            vocab_size=len(tokenizer),
            eos_id=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id,
            row_group_rows=ROW_GROUP_ROWS,
            inputs=P.versions(inputs),
            spec_fingerprint=spec.fingerprint(),
            spec=spec.resolved(),
        )
    Catalog.open(spec.catalog).record_tokenized(all_spans, shards.version)
    return shards


def _doc_batches(docs: ShardSet, batch_docs: int) -> Iterator[pl.DataFrame]:
    """``batch_docs`` documents at a time; one shard is read at a time (bounded memory)."""
    for shard in docs.iter_batches(["id", "text"]):
        for lo in range(0, shard.height, batch_docs):
            yield shard.slice(lo, batch_docs)


def _stack(parts: list[np.ndarray], seq_len: int) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty((0, seq_len), np.int32)


def _rows_frame(rows: np.ndarray, seq_len: int) -> pl.DataFrame:
    # A 2-D array becomes Array(Int32, seq_len), written as Arrow fixed_size_list[seq_len]:
    # the loader reads seq_len from the file schema without reading any data.
    return pl.DataFrame({"input_ids": pl.Series("input_ids", rows, pl.Array(pl.Int32, seq_len))})

"""Great Expectations suites over shard sets: the data contracts of each document product.

The Dagster layer runs these as blocking asset checks; they also run by hand:

    python -c "from flywheel.data.validation import *; print(validate_shardset(...).summary())"

GX validates a compact per-document frame (id, source, length, normalized-text hash) rather
than the texts, so a check of a shard set costs memory proportional to its row count, not its
bytes. One ephemeral GX context serves every check of a process, and each distinct suite is
registered in it once: building a context and its suite per check cost about as much as the
check itself on small products.

The no-exact-duplicates expectation hashes a normalization written here, not imported from
``flywheel.data.dedup``: a check that shares the engine's normalization inherits its bugs (an
engine that stopped lower-casing would hash "A" and "a" apart in both places, and the check
would pass the duplicates it left). This one is the README's definition of an exact duplicate
(lower-cased, whitespace-normalized text), in polars string expressions instead of Python.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from flywheel.core.shards import ShardSet

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no network here; never phone home

# Python's str.split() (what "whitespace-normalized" means across flywheel) also splits on the
# ASCII separators \x1c-\x1f, which are not Unicode White_Space (regex \s): include them, so
# this normalization is neither coarser (a correct engine would fail the check) nor finer.
_WHITESPACE_RUN = r"[\s\x1c-\x1f]+"
# A GX context is not thread-safe, and the shared one is mutated when a suite is first seen.
_GX_LOCK = threading.Lock()
_DATASOURCE, _ASSET, _BATCH = "flywheel", "documents", "whole_frame"


@dataclass(frozen=True)
class Outcome:
    expectation: str
    column: str | None
    success: bool
    unexpected: int
    total: int
    sample: list[Any] = field(default_factory=list)

    def describe(self) -> str:
        where = f" on {self.column}" if self.column else ""
        if self.success:
            return f"{self.expectation}{where}: ok"
        return (
            f"{self.expectation}{where}: {self.unexpected} of {self.total} rows failed"
            f" (e.g. {self.sample[:3]})"
        )


@dataclass(frozen=True)
class ValidationReport:
    suite: str
    success: bool
    rows: int
    outcomes: list[Outcome]

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success]

    def summary(self) -> str:
        head = f"suite {self.suite}: {'passed' if self.success else 'FAILED'} on {self.rows} rows"
        return "\n".join([head, *("  " + o.describe() for o in self.outcomes)])


def exact_duplicate_key(text: pl.Expr) -> pl.Expr:
    """The text as the exact-duplicate definition sees it: lower-cased, every whitespace run
    one space, no leading or trailing whitespace. No NFKC or casefold: the engine does neither,
    so "ﬁ"/"fi" or "Straße"/"STRASSE" are distinct documents and must not fail the check."""
    return text.str.to_lowercase().str.replace_all(_WHITESPACE_RUN, " ").str.strip_chars(" ")


def validation_frame(shardset: ShardSet) -> pl.DataFrame:
    """id, source, n_chars and a hash of the normalized text for every row of the set, read
    one shard at a time. The hash is polars' 64-bit one (fixed seed, so equal across batches);
    its collision odds match the engine's own 64-bit exact hash."""
    frames = [
        batch.select(
            "id",
            "source",
            pl.col("text").str.len_chars().alias("n_chars"),
            exact_duplicate_key(pl.col("text")).hash(seed=0).alias("norm_hash"),
        )
        for batch in shardset.iter_batches(columns=["id", "source", "text"])
    ]
    if not frames:
        schema = {"id": pl.String, "source": pl.String, "n_chars": pl.UInt32}
        return pl.DataFrame(schema={**schema, "norm_hash": pl.UInt64})
    return pl.concat(frames)


def validate_documents(
    frame: pl.DataFrame,
    suite: str,
    *,
    min_chars: int = 1,
    max_chars: int = 1_000_000,
    min_rows: int = 1,
    unique_text: bool = False,
) -> ValidationReport:
    """Run the document suite on a validation frame; ``unique_text`` adds the
    no-exact-duplicates expectation that deduplicated shards must meet."""
    # pandas without pyarrow-backed strings: GX's pandas engine expects numpy object columns.
    pandas_frame = frame.to_pandas(use_pyarrow_extension_array=False)
    with _GX_LOCK:
        definition = _definition(suite, min_chars, max_chars, min_rows, unique_text)
        result = definition.run(batch_parameters={"dataframe": pandas_frame})
        _forget_results()
    outcomes = [_outcome(r, frame.height) for r in result.results]
    return ValidationReport(suite, bool(result.success), frame.height, outcomes)


def validate_shardset(shardset: ShardSet, suite: str, **kwargs: Any) -> ValidationReport:
    return validate_documents(validation_frame(shardset), suite, **kwargs)


@functools.cache
def _context() -> Any:
    """The process's ephemeral GX context, with the one dataframe batch every suite reads
    (the frame itself is a run parameter, so one batch definition serves all products)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas(_DATASOURCE).add_dataframe_asset(_ASSET)
    asset.add_batch_definition_whole_dataframe(_BATCH)
    return context


@functools.cache
def _definition(
    suite: str, min_chars: int, max_chars: int, min_rows: int, unique_text: bool
) -> Any:
    """The validation definition of one suite with these bounds, registered once. Its GX name
    carries the bounds, so the same product checked with other bounds gets its own suite
    rather than overwriting one that an earlier caller still holds."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations = [
        gxe.ExpectTableRowCountToBeBetween(min_value=min_rows),
        gxe.ExpectColumnValuesToNotBeNull(column="id"),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToNotBeNull(column="source"),
        gxe.ExpectColumnValuesToBeBetween(
            column="n_chars", min_value=min_chars, max_value=max_chars
        ),
    ]
    if unique_text:
        expectations.append(gxe.ExpectColumnValuesToBeUnique(column="norm_hash"))
    context = _context()
    name = f"{suite}[rows>={min_rows},chars={min_chars}..{max_chars},unique_text={unique_text}]"
    # Expectations given up front: one store write for the suite, not one per expectation.
    gx_suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    batch = context.data_sources.get(_DATASOURCE).get_asset(_ASSET).get_batch_definition(_BATCH)
    return context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch, suite=gx_suite)
    )


def _forget_results() -> None:
    """Drop the run's stored result: the ephemeral context keeps every result in memory, and
    the report is built from the returned one, so a long-lived process would only grow."""
    backend = _context().validation_results_store.store_backend
    for key in backend.list_keys():
        if key != backend.STORE_BACKEND_ID_KEY:
            backend.remove_key(key)


def _outcome(r: Any, rows: int) -> Outcome:
    cfg = r.expectation_config
    res = r.result or {}
    kind = cfg.type
    unexpected = int(res.get("unexpected_count") or 0)
    if kind == "expect_table_row_count_to_be_between" and not r.success:
        unexpected = rows
    sample = [v for v in (res.get("partial_unexpected_list") or [])][:5]
    return Outcome(kind, cfg.kwargs.get("column"), bool(r.success), unexpected, rows, sample)

"""Great Expectations suites over shard sets: the data contracts of each document product.

The Dagster layer runs these as blocking asset checks; they also run by hand:

    python -c "from flywheel.data.validation import *; print(validate_shardset(...).summary())"

GX validates a compact per-document frame (id, source, length, normalized-text hash) rather
than the texts, so a check of a shard set costs memory proportional to its row count, not its
bytes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from flywheel.core.shards import ShardSet
from flywheel.data.dedup import normalize

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no network here; never phone home


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


def validation_frame(shardset: ShardSet) -> pl.DataFrame:
    """id, source, n_chars and a hash of the normalized text for every row of the set, read
    one shard at a time. The normalization is the one that defines an exact duplicate
    (``flywheel.data.dedup.normalize``: lower-cased, words joined by single spaces); the hash is
    computed here, apart from the dedup engine whose output it checks."""
    frames = []
    for batch in shardset.iter_batches(columns=["id", "source", "text"]):
        digests = [
            hashlib.blake2b(
                normalize(t).encode("utf-8", "surrogatepass"), digest_size=16
            ).hexdigest()
            for t in batch["text"]
        ]
        frames.append(
            batch.select(
                "id",
                "source",
                pl.col("text").str.len_chars().alias("n_chars"),
                pl.Series("norm_hash", digests, dtype=pl.String),
            )
        )
    if not frames:
        schema = {
            "id": pl.String,
            "source": pl.String,
            "n_chars": pl.UInt32,
            "norm_hash": pl.String,
        }
        return pl.DataFrame(schema=schema)
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
    result = _run_suite(gx, suite, expectations, frame)
    outcomes = [_outcome(r, frame.height) for r in result.results]
    return ValidationReport(suite, bool(result.success), frame.height, outcomes)


def validate_shardset(shardset: ShardSet, suite: str, **kwargs: Any) -> ValidationReport:
    return validate_documents(validation_frame(shardset), suite, **kwargs)


def _run_suite(gx: Any, name: str, expectations: list[Any], frame: pl.DataFrame) -> Any:
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("flywheel")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch, suite=suite)
    )
    # pandas without pyarrow-backed strings: GX's pandas engine expects numpy object columns.
    pandas_frame = frame.to_pandas(use_pyarrow_extension_array=False)
    return definition.run(batch_parameters={"dataframe": pandas_frame})


def _outcome(r: Any, rows: int) -> Outcome:
    cfg = r.expectation_config
    res = r.result or {}
    kind = cfg.type
    unexpected = int(res.get("unexpected_count") or 0)
    if kind == "expect_table_row_count_to_be_between" and not r.success:
        unexpected = rows
    sample = [v for v in (res.get("partial_unexpected_list") or [])][:5]
    return Outcome(kind, cfg.kwargs.get("column"), bool(r.success), unexpected, rows, sample)

"""The document filters as a Ray Data map stage over shards (``engine: ray``).

    python -c "from flywheel.data.ray_map import *; help(filter_outcomes)"

``filter_outcomes(files, settings)`` reads the raw shard files with Ray Data, runs
``apply_filters`` on each block in a Ray worker (wherever the cluster has a free CPU), and
streams the outcomes back in the files' order, one ``FilterOutcome`` per block: the same
kept rows, dropped rows with reasons and decisions the local engine computes, since the same
function judges every document alone. The caller writes them with the same shard writer,
so a shard set filtered on Ray equals one filtered locally (tested). Tasks lost with a node
are retried by Ray Data. Ray is imported here only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl

from flywheel.core.settings.filters import FilterSettings
from flywheel.data.filters import apply_filters, build_filters
from flywheel.data.filters.apply import split_judged

FILTER, REASON = "__filter", "__reason"  # the judgement beside the row (null filter: kept)


def _judge(block, settings: FilterSettings):  # noqa: ANN001, ANN202 - pyarrow in and out
    """A block's rows, each with its filter decision appended (a Ray task: retried when its
    node is lost; building the filters is cheap next to judging a block)."""
    df = pl.from_arrow(block)
    decisions = apply_filters(df, build_filters(settings)).decisions
    judged = df.with_columns(
        decisions["filter"].alias(FILTER),
        decisions["reason"].alias(REASON),
    )
    return judged.to_arrow()


def filter_outcomes(
    files: list[Path], settings: FilterSettings, batch_rows: int = 4096
) -> Iterator[tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]]:
    """(kept, dropped, decisions) per block of the shard ``files``, in their order."""
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # shards come out as they went in
    ds = ray.data.read_parquet([str(f) for f in files], shuffle=None)
    judged = ds.map_batches(
        _judge, fn_kwargs={"settings": settings}, batch_format="pyarrow", batch_size=batch_rows
    )
    for block in judged.iter_batches(batch_format="pyarrow", batch_size=None):
        df = pl.from_arrow(block)
        yield split(df)


def split(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """A judged block as ``apply_filters`` returns it: kept, dropped (+ reason), decisions."""
    return split_judged(df.drop(FILTER, REASON), df[FILTER], df[REASON])

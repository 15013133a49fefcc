"""The Ray engine's task graph, run task after task in this process (no Ray): the local
engine's decisions, whatever the partition count and block size.

    .venv/bin/python -m pytest -q tests/data/dedup/test_task_steps.py
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from flywheel.core.settings.dedup import DedupSettings
from flywheel.data.dedup import deduplicate, task_steps
from flywheel.data.dedup.task_steps import gather, run_here, split

from .conftest import planted_corpus


def removed_here(ids, texts, settings, partitions, block_rows) -> list[tuple]:
    blocks = [
        pa.table(
            {
                "pos": np.arange(a, min(a + block_rows, len(ids)), dtype=np.int64),
                "id": pa.array(ids[a : a + block_rows], pa.string()),
                "text": pa.array(texts[a : a + block_rows], pa.large_string()),
            }
        )
        for a in range(0, len(ids), block_rows)
    ]
    gone = run_here(blocks, settings, partitions)
    return list(zip(*(gone.column(c).to_pylist() for c in ("id", "dup_of", "sim")), strict=True))


@pytest.mark.parametrize(
    ("settings", "partitions", "block_rows"),
    [
        (DedupSettings(), 3, 16),
        (DedupSettings(), 1, 1000),
        (DedupSettings(exact=False, verify="signature", threshold=0.7), 5, 7),
        (DedupSettings(minhash=False), 2, 16),
    ],
    ids=["default", "one-partition-one-block", "no-exact", "exact-only"],
)
def test_the_task_graph_decides_as_the_local_engine(
    settings, partitions, block_rows, monkeypatch
) -> None:
    if block_rows == 7:  # and verification in chunks smaller than a block's pairs
        monkeypatch.setattr(task_steps, "_VERIFY_CHUNK", 3)
    ids, texts = planted_corpus(variants=40, seed=1)
    local = deduplicate(ids, texts, settings)
    expected = [(r["id"], r["duplicate_of"], r["similarity"]) for r in local.duplicates.to_dicts()]
    assert len(expected) > 10
    assert removed_here(ids, texts, settings, partitions, block_rows) == expected


def test_a_routed_output_gives_each_destination_its_rows() -> None:
    table = pa.table({"key": np.array([5, 2, 7, 4, 9, 0], np.int64), "v": list("abcdef")})
    routed = split(table, 3)
    assert [routed.piece(i).column("v").to_pylist() for i in range(3)] == [
        ["e", "f"],
        ["c", "d"],
        ["a", "b"],
    ]
    assert gather([routed, routed], 1).column("key").to_pylist() == [7, 4, 7, 4]

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


def removed_here(ids, texts, settings, partitions, block_rows, tasks=None) -> list[tuple]:
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
    gone = run_here(blocks, settings, partitions, tasks)
    return list(zip(*(gone.column(c).to_pylist() for c in ("id", "dup_of", "sim")), strict=True))


@pytest.mark.parametrize(
    ("settings", "partitions", "block_rows", "tasks"),
    [
        (DedupSettings(), 3, 16, None),
        (DedupSettings(), 1, 1000, None),
        (DedupSettings(exact=False, verify="signature", threshold=0.7), 5, 7, None),
        (DedupSettings(minhash=False), 2, 16, None),
        (DedupSettings(), 7, 16, 3),  # tasks of 2, 2 and 3 partitions
        (DedupSettings(exact=False), 5, 9, 1),
    ],
    ids=["default", "one-partition-one-block", "no-exact", "exact-only", "grouped", "one-task"],
)
def test_the_task_graph_decides_as_the_local_engine(
    settings, partitions, block_rows, tasks, monkeypatch
) -> None:
    if block_rows == 7:  # and verification in chunks smaller than a block's pairs
        monkeypatch.setattr(task_steps, "_VERIFY_CHUNK", 3)
    ids, texts = planted_corpus(variants=40, seed=1)
    local = deduplicate(ids, texts, settings)
    expected = [(r["id"], r["duplicate_of"], r["similarity"]) for r in local.duplicates.to_dicts()]
    assert len(expected) > 10
    assert removed_here(ids, texts, settings, partitions, block_rows, tasks) == expected


def test_a_routed_output_gives_each_destination_its_rows() -> None:
    table = pa.table({"key": np.array([5, 2, 7, 4, 9, 0], np.int64), "v": list("abcdef")})
    routed = split(table, 3)
    assert [routed.piece(i).column("v").to_pylist() for i in range(3)] == [
        ["e", "f"],
        ["c", "d"],
        ["a", "b"],
    ]
    assert gather([routed, routed], 1).column("key").to_pylist() == [7, 4, 7, 4]


def test_a_task_over_several_partitions_routes_as_their_separate_tasks() -> None:
    keys = np.arange(40, dtype=np.int64) * 7919
    routed = [split(pa.table({"key": keys[:25]}), 4), split(pa.table({"key": keys[25:]}), 4)]

    def step(inputs, i):  # a keyed step: re-split its partition's rows, and count them
        part = gather(inputs, i)
        return [split(pa.table({"key": pa.array(part.column("key")) + 1}), 3), part.num_rows]

    merged = task_steps.each(routed, step=step, parts=range(1, 4))
    separate = [step(routed, i) for i in range(1, 4)]
    for dest in range(3):
        want = sorted(k for out in separate for k in out[0].piece(dest).column("key").to_pylist())
        assert sorted(merged[0].piece(dest).column("key").to_pylist()) == want
    assert merged[1] == sum(out[1] for out in separate) > 0

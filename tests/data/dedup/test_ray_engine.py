"""The Ray engine decides exactly as the local one: same kept ids, same duplicate_of.

    .venv/bin/python -m pytest -q tests/data/dedup/test_ray_engine.py

A one-node Ray cluster started here (2 CPUs, a small object store); the multi-node run, with a
node killed mid-stage, is tests/data/test_dedup_ray_multinode.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from flywheel.cli import main
from flywheel.core.settings.dedup import DedupSettings
from flywheel.core.settings.engine import RaySettings
from flywheel.data.dedup import deduplicate
from flywheel.data.dedup.cli import DUPLICATES, KEPT, REJECTED

from .conftest import planted_corpus

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=150 << 20)
    yield
    ray.shutdown()


def same_decisions(ids, texts, settings: DedupSettings, partitions: int = 4) -> None:
    from flywheel.data.dedup.ray_engine import deduplicate_ray

    local = deduplicate(ids, texts, settings)
    distributed = deduplicate_ray(ids, texts, settings, RaySettings(partitions=partitions), 16)
    assert distributed.keep.tolist() == local.keep.tolist()
    assert distributed.duplicates.to_dicts() == local.duplicates.to_dicts()
    assert distributed.stats == {k: local.stats[k] for k in distributed.stats}


def test_planted_cases_are_decided_as_locally(cluster) -> None:
    ids, texts = planted_corpus(variants=120)
    local = deduplicate(ids, texts)
    dupes = {r["id"]: (r["duplicate_of"], r["method"]) for r in local.duplicates.to_dicts()}
    # the corpus exercises what it claims to: exact copies, a resolved chain, blanks, repeats
    assert dupes["exact0"] == dupes["exact0b"] == ("doc0", "exact")
    assert dupes["chain_c"] == dupes["chain_e"] == ("doc10", "minhash")
    assert dupes["blank2"] == ("empty1", "exact") and dupes["near7"] == ("doc7", "minhash")
    assert ids.count("doc3") == 2 and "doc3" not in dupes
    assert local.stats["minhash_removed"] > 20 and local.stats["exact_removed"] > 10
    same_decisions(ids, texts, DedupSettings())
    # more partitions than the 2-CPU cluster's 4 tasks per stage: tasks of 2 and 3 partitions
    same_decisions(ids, texts, DedupSettings(), partitions=10)


@pytest.mark.parametrize(
    "settings",
    [
        DedupSettings(exact=False, verify="signature", threshold=0.7),
        DedupSettings(minhash=False),
        DedupSettings(verify="none", bucket_window=1, num_perm=64),
    ],
    ids=["no-exact-signature", "exact-only", "no-verify"],
)
def test_every_verification_mode_is_decided_as_locally(cluster, settings) -> None:
    same_decisions(*planted_corpus(variants=40, seed=1), settings, partitions=3)


def test_corner_cases(cluster) -> None:
    same_decisions([], [], DedupSettings())
    same_decisions(["a", "b", "a"], ["", "", "x"], DedupSettings())
    same_decisions([1, 2], ["one two three", "four five six"], DedupSettings(), partitions=1)


def test_blocks_out_of_order_are_refused(cluster) -> None:
    import pyarrow as pa

    from flywheel.data.dedup.ray_engine import dedup_blocks

    # the pair joins find a document's block from the blocks' first positions
    blocks = [pa.table({"pos": [p], "id": [str(p)], "text": ["x y z"]}) for p in (5, 2)]
    with pytest.raises(ValueError, match="increasing positions"):
        dedup_blocks(blocks, DedupSettings(), RaySettings())


def test_the_local_engine_never_imports_ray() -> None:
    code = textwrap.dedent(
        """
        import sys
        from flywheel.cli import main
        from flywheel.core.spec import Spec
        from flywheel.data.dedup import DedupIndex, deduplicate
        import flywheel.data.dedup.cli, flywheel.data.stages
        deduplicate(["a", "b"], ["x y z", "x y z"])
        Spec(engine="local")
        assert "ray" not in sys.modules, sorted(m for m in sys.modules if m.startswith("ray"))
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_cli_writes_the_same_outputs_on_ray(cluster, tmp_path: Path, capsys) -> None:
    ids, texts = planted_corpus(variants=30, seed=2)
    # integer ids where the planted ones allow (the outputs keep the input's id type)
    rows = [{"id": 1000 + i, "text": t, "lang": "en"} for i, t in enumerate(texts)]
    rows[ids.index("chain_e")]["id"] = 1000 + ids.index("chain_b")  # a repeated id
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n\n")
    frames, summaries = {}, {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        args = ["dedup", str(src), "-o", str(out), "--batch-size", "23", "--engine", engine]
        assert main(args) == 0
        frames[engine] = [pl.read_parquet(out / f) for f in (KEPT, DUPLICATES, REJECTED)]
        summary = json.loads((out / "summary.json").read_text())
        summaries[engine] = {k: v for k, v in summary.items() if k not in ("seconds", "engine")}
    assert summaries["ray"] == summaries["local"]
    for local, distributed in zip(frames["local"], frames["ray"], strict=True):
        assert distributed.equals(local)
    kept, dupes, rejected = frames["ray"]
    assert kept.columns == ["id", "text", "lang"] and dupes["id"].dtype == pl.Int64
    assert summaries["ray"]["removed"] == dupes.height > 10
    assert rejected["reason"].to_list() == ["invalid_json"]

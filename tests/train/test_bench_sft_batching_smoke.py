"""bench/sft_batching.py on the agent example's data, a few steps: it runs, balanced batches
carry less padding than random ones, and the last line has the keys it documents."""

from __future__ import annotations

import pytest

from tests.bench_run import run_bench


@pytest.mark.integration
def test_sft_batching_bench_smoke() -> None:
    args = ["--steps", "2", "--repeats", "1", "--splits", "2,4", "--threads", "1"]
    lines, pairs = run_bench("sft_batching.py", [*args, "--set", "sft.data.num_examples=256"])
    assert {"random_tok_s", "balanced_tok_s", "best_split", "loss_random", "ratio"} <= set(pairs)
    assert float(pairs["ratio"]) > 0 and pairs["best_split"] in ("2", "4")
    assert float(pairs["padding_balanced"]) < float(pairs["padding_random"])
    rows = [line for line in lines if line.startswith("| random") or line.startswith("| bal")]
    assert len(rows) == 3, lines

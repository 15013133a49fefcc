"""bench/train.py on a tiny model: it runs, the plain baseline uses the platform's very
optimizer (their losses agree at every step), and the last line has the keys it documents."""

from __future__ import annotations

import pytest

from tests.bench_run import run_bench


@pytest.mark.integration
def test_train_bench_smoke_same_optimizer_same_losses() -> None:
    args = ["--steps", "2", "--repeats", "2", "--warmup", "1", "--hidden", "64"]
    args += ["--layers", "1", "--micro-batch", "2", "--vocab", "1024"]
    lines, pairs = run_bench("train.py", args)
    assert float(pairs["platform_tok_s"]) > 0 and float(pairs["baseline_tok_s"]) > 0
    assert float(pairs["ratio"]) > 0 and float(pairs["ratio_vs_default_adamw"]) > 0
    assert float(pairs["loss_max_diff"]) < 1e-5, lines
    optimizer = next(line for line in lines if line.startswith("optimizer"))
    assert "2 groups, fused=True" in optimizer

"""bench/optimizers.py on a tiny model: it runs all three optimizers in one process and its
last line has the keys it documents, with each optimizer's state where it should be."""

from __future__ import annotations

import math

import pytest

from tests.bench_run import run_bench


@pytest.mark.integration
def test_optimizers_bench_smoke() -> None:
    args = ["--steps", "4", "--block", "2", "--hidden", "64", "--layers", "1"]
    args += ["--micro-batch", "2", "--vocab", "1024"]
    _, pairs = run_bench("optimizers.py", args)
    for name in ("adamw", "adafactor", "muon"):
        assert math.isfinite(float(pairs[f"{name}_loss"])), pairs
        assert float(pairs[f"{name}_step_ms"]) > 0 and float(pairs[f"{name}_opt_ms"]) > 0
    assert float(pairs["adamw_bytes"]) == pytest.approx(8.0, rel=1e-2)
    assert float(pairs["adafactor_bytes"]) < 1 < 4 < float(pairs["muon_bytes"]) < 8

"""bench/train_gpu.py cannot be timed here (no CUDA), but its code paths run: --smoke trains
a tiny model through the same platform path and baseline loop on CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_gpu_bench_smoke_runs_and_prints_key_values() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_gpu.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    pairs = dict(kv.split("=") for kv in last.split())
    assert float(pairs["smoke_tok_s"]) > 0 and float(pairs["smoke_baseline_tok_s"]) > 0
    assert "ratio" in pairs


def test_gpu_bench_refuses_without_cuda() -> None:
    if __import__("torch").cuda.is_available():
        pytest.skip("CUDA present")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_gpu.py")], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "needs CUDA" in proc.stderr

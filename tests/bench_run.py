"""Run a ``bench/`` script as a user would, on the CPU, for the benches' smoke tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, args: list[str], timeout: int = 300) -> tuple[list[str], dict[str, str]]:
    """``bench/<script>`` with ``args`` from the repository root, CUDA hidden: its stdout lines
    and the ``key=value`` pairs of its last line (the test fails with its stderr's tail)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    return lines, dict(kv.split("=") for kv in lines[-1].split())

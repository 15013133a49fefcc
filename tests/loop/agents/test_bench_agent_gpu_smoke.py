"""bench/agent_gpu.py --smoke: the GPU bench's collection and PPO paths on a tiny model on the
CPU, so the script a device session runs once is known to run through."""

from __future__ import annotations

import pytest

from tests.bench_run import run_bench


@pytest.mark.integration
def test_agent_gpu_bench_smoke_times_collection_and_ppo() -> None:
    lines, pairs = run_bench("agent_gpu.py", ["--smoke"])
    assert any(line.startswith("model:") and line.endswith("cpu") for line in lines), lines
    played = [line for line in lines if line.startswith("collection")]
    assert [line.split()[2] for line in played] == ["8", "2"]  # batched, then one at a time
    for key in ("batched_eps_s", "sequential_eps_s", "ppo_iter_s", "ppo_update_tok_s", "ratio"):
        assert float(pairs[key]) > 0, key
    shares = [float(pairs[f"ppo_{phase}_share"]) for phase in ("collect", "score", "update")]
    assert all(share > 0 for share in shares) and 0.5 < sum(shares) <= 1.0, shares

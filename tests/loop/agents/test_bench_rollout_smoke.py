"""bench/rollout.py on a tiny model: it runs its four paths on the same episodes, they take
the same number of turns, and the last line has the keys it documents."""

from __future__ import annotations

import pytest

from tests.bench_run import ROOT, run_bench


@pytest.mark.integration
def test_rollout_bench_smoke_prints_key_values() -> None:
    args = ["--episodes", "3", "--max-turns", "2", "--max-new-tokens", "4", "--hidden", "64"]
    args += ["--layers", "1", "--heads", "2", "--vocab", "512", "--threads", "1"]
    lines, pairs = run_bench("rollout.py", args)
    assert pairs["episodes"] == "3" and pairs["max_turns"] == "2"
    assert float(pairs["batched_eps_s"]) > 0 and float(pairs["sequential_eps_s"]) > 0
    assert float(pairs["batched_tok_s"]) > 0 and float(pairs["ratio"]) > 0
    assert float(pairs["ratio_vs_sequential_nocache"]) > 0 and float(pairs["cpu_ratio"]) > 0
    rows = {
        line.split()[0]: line.split()
        for line in lines
        if line.startswith(("batched", "sequential"))
    }
    assert len(rows) == 4  # with and without the KV cache kept between turns
    assert {row[4] for row in rows.values()} == {"6"}  # turns: 3 episodes x 2, on every path


@pytest.mark.integration
def test_rollout_bench_takes_the_agent_and_tokenizer_from_a_spec() -> None:
    spec = ROOT / "examples" / "agent" / "flywheel.yaml"
    args = ["--spec", str(spec), "--episodes", "2", "--max-turns", "2", "--threads", "1"]
    lines, pairs = run_bench("rollout.py", args)
    # the flag wins over the spec's agent.max_turns (8); max_new_tokens is the spec's
    assert pairs["max_turns"] == "2" and pairs["max_new_tokens"] == "8"
    work = next(line for line in lines if line.startswith("work:"))
    assert "temperature 0.7" in work  # agent.temperature
    model = next(line for line in lines if line.startswith("model:"))
    # the spec's 2,048-token vocabulary, the tool tags and its six added tokens; its shape
    assert "vocab 2056" in model and "llama 4x128" in model, model

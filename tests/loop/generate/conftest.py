"""A tiny real chat checkpoint for generation tests: trained briefly, so it ends its turns.

A 2-layer, 64-wide Llama (two heads of 32: the smallest head size vLLM's CPU attention
supports, so the same checkpoint serves the vLLM test) with a digit-splitting BPE tokenizer
is trained for a few seconds on arithmetic conversations in ChatML. That is enough for it to
answer with a few digits and close the turn with ``<|im_end|>``, which a random model never
does, and to make greedy decoding confident (no near-ties that different kernels could
break differently). Like an SFT checkpoint, its generation config stops at ``<|im_end|>``.
It is published with ``artifacts.publish`` so that ``artifacts.verify`` accepts it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flywheel.core import artifacts
from flywheel.data.arithmetic import arithmetic_examples

TINY_CHAT_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
MAX_POSITIONS = 512  # >= ServeSettings' default --max-model-len, which vLLM checks
TRAIN_STEPS = 80  # ~3 s on one core; enough to answer and close the turn


def chat(prompt: str, answer: str) -> str:
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"


def build_chat_checkpoint(
    root: Path,
    steps: int = TRAIN_STEPS,
    seed: int = 0,
    texts: list[str] | None = None,
    vocab_size: int = 300,
) -> artifacts.Artifact:
    """Publish a tiny trained chat model + tokenizer under ``root``; the artifact. ``texts``:
    the ChatML conversations to train on (default: arithmetic questions and answers)."""
    from flywheel.core.settings.train import ModelSettings
    from flywheel.train.model import build_model
    from flywheel.train.tokenizer import stop_token_ids, train_tokenizer

    if texts is None:
        examples = arithmetic_examples(600, 20, seed=99)
        texts = [chat(e["prompt"], e["answer"]) for e in examples]
    staging = artifacts.staging_dir(root)
    tok = train_tokenizer(texts, vocab_size=vocab_size, min_frequency=2, out_dir=staging)
    special = {
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.bos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    settings = ModelSettings(config=TINY_CHAT_LLAMA)
    model = build_model(settings, len(tok), MAX_POSITIONS, special, seed=seed)
    train(model, tok, texts, steps, seed)
    model.generation_config.eos_token_id = stop_token_ids(tok)  # as flywheel.train.sft does
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(staging)
    return artifacts.publish(root, staging, stage="sft", steps=steps)


def train(model: torch.nn.Module, tok, texts: list[str], steps: int, seed: int) -> None:
    """Plain next-token training on whole conversations (a few seconds on one CPU core)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-wide model: more threads only contend on a shared CPU
    model.train()
    try:
        _steps(model, tok, texts, steps, gen, opt)
    finally:
        torch.set_num_threads(threads)
    model.eval()


def _steps(model, tok, texts: list[str], steps: int, gen: torch.Generator, opt) -> None:
    for _ in range(steps):
        idx = torch.randint(len(texts), (16,), generator=gen).tolist()
        enc = tok(
            [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
        )
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(scope="session")
def chat_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The published tiny chat checkpoint's directory (shared, read-only)."""
    return build_chat_checkpoint(tmp_path_factory.mktemp("chat") / "sft_checkpoint").path

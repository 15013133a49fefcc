"""A real tokenizer (ChatML template, trained on tool-calling text) and scripted policies.

The policies are test drivers of the collector, not the thing under test: ``Bisection``
plays NumberGuess optimally from the conversation alone, ``Scripted`` replays fixed texts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flywheel.loop.agents.collect import Context, Step
from flywheel.loop.agents.toolcalls import format_tool_call


def tool_texts(n: int = 150) -> list[str]:
    """ChatML conversations in which the assistant calls guess and a tool answers."""
    replies = ["higher; 3 guesses left", "lower; 2 guesses left", "correct"]
    return [
        f"<|im_start|>user\nFind the secret number from 1 to {i + 4}.<|im_end|>\n"
        f"<|im_start|>assistant\n{format_tool_call('guess', {'number': i % 50})}<|im_end|>\n"
        f"<|im_start|>tool\n{replies[i % 3]}<|im_end|>\n"
        for i in range(n)
    ]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flywheel.train.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("agents-tokenizer")
    train_tokenizer(tool_texts(), vocab_size=400, min_frequency=2, out_dir=out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> Any:
    from flywheel.train.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


def text_step(tokenizer: Any, text: str) -> Step:
    """A turn as a model that stopped would give it: the text's ids and ``<|im_end|>``."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return Step(text, ids + [tokenizer.convert_tokens_to_ids("<|im_end|>")], None, "stop")


class Scripted:
    """Answers the k-th turn of every episode with ``texts[k]`` (the last one repeated);
    records the batch size of every call."""

    backend = "scripted"
    sampling: dict[str, Any] = {}

    def __init__(self, tokenizer: Any, texts: list[str]) -> None:
        self.tokenizer, self.texts, self.calls = tokenizer, texts, []

    def __call__(self, contexts: list[Context]) -> list[Step]:
        self.calls.append(len(contexts))
        return [self.step(c) for c in contexts]

    def step(self, context: Context) -> Step:
        k = sum(m["role"] == "assistant" for m in context.messages)
        return text_step(self.tokenizer, self.texts[min(k, len(self.texts) - 1)])


class Bisection(Scripted):
    """Guesses the middle of the range the replies so far leave open."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer, [])

    def step(self, context: Context) -> Step:
        user = next(m["content"] for m in context.messages if m["role"] == "user")
        low, high = 1, int(re.search(r"from 1 to (\d+)", user).group(1))
        said = [m for m in context.messages if m["role"] == "assistant"]
        heard = [m for m in context.messages if m["role"] == "tool"]
        for asked, reply in zip(said, heard, strict=True):
            number = asked["tool_calls"][0]["function"]["arguments"]["number"]
            if reply["content"].startswith("higher"):
                low = number + 1
            elif reply["content"].startswith("lower"):
                high = number - 1
        guess = format_tool_call("guess", {"number": (low + high) // 2})
        return text_step(self.tokenizer, f"I guess the middle.\n{guess}")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module (``pytest.mark.usefixtures``), its module fixtures
    included: a 64-wide model gains nothing from a second thread, which only contends on a
    shared CPU (about 20x slower here under load)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

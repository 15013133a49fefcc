"""What every generation backend shares: sampling parameters, per-prompt seeds, completions
and the backend protocol (``flywheel.loop.generate.backends`` opens one). Backends render
conversations with ``flywheel.core.chat.render_prompts``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from flywheel.core.chat import Messages
from flywheel.core.settings.loop import GenerationSettings

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How each prompt's ``n`` completions are drawn (plain values, no spec object)."""

    n: int
    temperature: float
    top_p: float
    top_k: int  # 0: off
    max_new_tokens: int
    seed: int
    greedy_first: bool

    @property
    def greedy(self) -> list[bool]:
        """Which of the ``n`` samples are greedy: all at temperature 0, else sample 0 if asked."""
        if self.temperature == 0:
            return [True] * self.n
        return [self.greedy_first and i == 0 for i in range(self.n)]

    @property
    def sampled(self) -> int:
        """How many samples are drawn at ``temperature`` (the rest are greedy)."""
        return self.greedy.count(False)


def sampling_params(settings: GenerationSettings, cycle: int) -> SamplingParams:
    """The sampling of cycle ``cycle``: a new seed each cycle, so cycles draw new samples."""
    return SamplingParams(
        n=settings.samples_per_prompt,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        max_new_tokens=settings.max_new_tokens,
        seed=settings.seed + cycle,
        greedy_first=settings.greedy_first,
    )


def prompt_seed(seed: int, text: str) -> int:
    """A per-prompt request seed: prompts draw independent streams, reproducibly, whatever
    their order or batching (servers seed each request on its own)."""
    digest = hashlib.sha1(f"{seed}|{text}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


@dataclass(frozen=True)
class Completion:
    """One completion: its text (without the stop token), why it ended, tokens generated
    (the stop token included)."""

    text: str
    finish_reason: FinishReason
    tokens: int


class Backend(Protocol):
    """What generation needs from a backend; ``close`` frees it (a server is stopped)."""

    name: str

    def generate(
        self, prompts: list[Messages | str], params: SamplingParams
    ) -> list[list[Completion]]:
        """``params.n`` completions of every conversation to continue (a string: one user
        turn), in prompt order."""
        ...

    def close(self) -> None: ...


class Closing:
    """``with open_backend(...) as backend:`` closes the backend, also on errors."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

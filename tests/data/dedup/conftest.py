"""Real prose for the dedup tests: Python's documentation topics, and ways to perturb it."""

from __future__ import annotations

import pydoc_data.topics
import random

import pytest


def prose(n: int = 60, min_words: int = 150) -> list[str]:
    """The ``n`` longest documentation topics with >= min_words words (distinct texts)."""
    texts = sorted(set(pydoc_data.topics.topics.values()), key=len, reverse=True)
    return [t for t in texts if len(t.split()) >= min_words][:n]


def mutate(text: str, changes: int, seed: int) -> str:
    """``text`` with ``changes`` words replaced by fresh ones, at random positions."""
    rng = random.Random(seed)
    words = text.split()
    for k, i in enumerate(rng.sample(range(len(words)), changes)):
        words[i] = f"zq{seed}x{k}"
    return " ".join(words)


@pytest.fixture(scope="session")
def docs() -> list[str]:
    return prose()

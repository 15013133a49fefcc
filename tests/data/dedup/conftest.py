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


def mutate_span(text: str, lo: float, hi: float, changes: int, seed: int) -> str:
    """``text`` with ``changes`` words replaced, all within the fraction [lo, hi) of it."""
    rng = random.Random(seed)
    words = text.split()
    span = range(int(lo * len(words)), int(hi * len(words)))
    for k, i in enumerate(rng.sample(span, changes)):
        words[i] = f"zq{seed}y{k}"
    return " ".join(words)


def planted_corpus(variants: int = 0, seed: int = 0) -> tuple[list[str], list[str]]:
    """(ids, texts): distinct prose plus every case the engines must agree on: exact copies
    (case and spacing differ), a chain A~B~C~E where A!~C and B!~E (so C and E reach A only
    through their parents), empty and blank texts, a repeated id with another text; then
    ``variants`` random rewrites of the prose, from near copies to unrelated."""
    docs = prose(60)
    ids, texts = [f"doc{i}" for i in range(len(docs))], list(docs)
    a = docs[10]
    k = len(a.split()) // 60  # J(A, B) ~ 0.87, J(A, C) ~ 0.74 with 5-word shingles
    b = mutate_span(a, 0.0, 0.5, k, 1)
    c = mutate_span(b, 0.5, 1.0, k, 2)
    e = mutate_span(c, 0.0, 0.5, k, 3)
    planted = {
        "exact0": docs[0].upper(),
        "exact0b": "  ".join(docs[0].split()),
        "chain_b": b,
        "chain_c": c,
        "chain_e": e,
        "empty1": "",
        "blank2": " \n\t ",
        "doc3": docs[4],  # a repeated id: it gets doc3's decision, its text is not read
        "near7": mutate(docs[7], 3, 7),
    }
    ids += list(planted)
    texts += list(planted.values())
    rng = random.Random(seed)
    for v in range(variants):
        base = docs[rng.randrange(len(docs))]
        changes = rng.choice([0, 1, 4, 16, 64, len(base.split()) // 2])
        ids.append(f"v{v}")
        texts.append(mutate(base, min(changes, len(base.split())), 1000 + v))
    return ids, texts

"""Built-in synthetic problems with known answers: arithmetic and reversed-digit addition.

    python -c "from flywheel.data.arithmetic import arithmetic_examples as a; print(a(3, 20, 0))"

The same generators feed SFT data (``sft.data.kind: arithmetic | addition``), evaluation tasks
and prompt sources; they differ only by seed, so a model is evaluated on problems drawn from
the distribution it was tuned on, mostly not the same ones.
"""

from __future__ import annotations

import random


def arithmetic_examples(n: int, max_operand: int, seed: int) -> list[dict[str, str]]:
    """``n`` problems like ``What is 7 + 12?`` -> ``19``; the same arguments, the same list.

    Subtraction puts the larger operand first, so every answer is a non-negative integer: a
    tiny model then learns one digit vocabulary, and a leading "-" never decides correctness.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        if rng.random() < 0.5:
            out.append({"prompt": f"What is {a} + {b}?", "answer": str(a + b)})
        else:
            a, b = max(a, b), min(a, b)
            out.append({"prompt": f"What is {a} - {b}?", "answer": str(a - b)})
    return out


def addition_examples(
    n: int, min_digits: int, max_digits: int, width: int, seed: int
) -> list[dict[str, str]]:
    """``n`` sums written least-significant digit first, zero-padded to a fixed width.

    ``a=123, b=45, width=5`` is the prompt ``32100+54000`` and the answer ``861000`` (the
    sum, padded to ``width + 1`` digits and reversed). Reversed digits let a causal model
    emit each answer digit right after the operand digits and carry it depends on; the fixed
    width puts every digit at the same position whatever the number's length, so a model
    trained on 3-digit sums has seen every position (holding zeros) and can extend to 4
    and 5 digits from its own verified answers. Operand lengths are uniform over
    ``[min_digits, max_digits]``; the same arguments give the same list.
    """
    if not 1 <= min_digits <= max_digits <= width:
        raise ValueError(
            f"need 1 <= min_digits <= max_digits <= width, got {min_digits}, {max_digits}, {width}"
        )
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = (_number(rng, rng.randint(min_digits, max_digits)) for _ in range(2))
        prompt = f"{_reversed(a, width)}+{_reversed(b, width)}"
        out.append({"prompt": prompt, "answer": _reversed(a + b, width + 1)})
    return out


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


def _reversed(value: int, width: int) -> str:
    return str(value).zfill(width)[::-1]

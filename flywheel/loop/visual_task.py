"""The visual task in the loop: held-out eval images, generation prompts, SFT data, scoring.

    python -c "from flywheel.loop.visual_task import VisualTask; t = VisualTask(); \
print(len(t.eval_problems()), len(t.prompts(cycle=1, num_prompts=8)))"

``VisualTask`` is the counting task of ``flywheel.data.visual`` with its settings (object
range: the easy-to-hard axis; image size; seeds): ``eval_problems`` are the held-out images
(seed ``eval_seed``), ``prompts`` a cycle's generation problems (seed ``seed + cycle``) with
every held-out image drawn again, never shown, exactly as ``flywheel.loop.prompts`` keeps
text eval prompts out, and ``sft_examples`` training conversations, which are kept clear of
held-out images the same way. ``score`` judges completions with the task's verifier
(``numeric``: the first number written must be the count), through ``flywheel.loop.
verifiers.score_rows`` as text eval does; ``accuracy`` answers the held-out problems with a
model (greedy) and scores them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from flywheel.core.settings.verifier import VerifierSettings
from flywheel.data.visual import check_axis, heldout_ids, shape_examples, visual_prompts
from flywheel.loop.verifiers import score_rows

VERIFIER = VerifierSettings(kind="numeric")


@dataclass(frozen=True)
class VisualTask:
    min_objects: int = 1
    max_objects: int = 3  # the easy end: chance is 1 / (max - min + 1)
    size: int = 32
    eval_examples: int = 100  # standard error <= 0.05, as the built-in text tasks
    eval_seed: int = 1_000_003  # far from the generation seeds (seed + cycle)
    seed: int = 0

    def __post_init__(self) -> None:
        check_axis(self.min_objects, self.max_objects, self.size)

    def eval_problems(self) -> list[dict[str, Any]]:
        return shape_examples(
            self.eval_examples, self.min_objects, self.max_objects, self.size, self.eval_seed
        )

    @cached_property
    def heldout(self) -> set[str]:
        """The ids of the held-out images: no prompt or training example ever shows one."""
        return heldout_ids(self.eval_problems())

    def prompts(self, cycle: int, num_prompts: int) -> list[dict[str, Any]]:
        """Cycle ``cycle``'s generation problems: distinct, none held out."""
        if cycle < 0:
            raise ValueError(f"cycle must be >= 0, got {cycle}")
        return self._drawn(num_prompts, self.seed + cycle)

    def sft_examples(self, n: int, seed: int) -> list[dict[str, Any]]:
        """``n`` distinct problems for SFT (none held out), each with its answer."""
        return self._drawn(n, seed)

    def _drawn(self, n: int, seed: int) -> list[dict[str, Any]]:
        args = (self.min_objects, self.max_objects, self.size, seed)
        return visual_prompts(n, *args, exclude=self.heldout)


def score(problems: list[dict[str, Any]], completions: list[str]) -> list[tuple[bool, str | None]]:
    """(correct, reason) of each completion against its problem's count."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    prompts = [p["prompt"] for p in problems]
    return score_rows(VERIFIER, prompts, completions, [p["answer"] for p in problems])


def accuracy(model: Any, processor: Any, problems: list[dict[str, Any]]) -> float:
    """The share of ``problems`` a model answers correctly, greedily."""
    from flywheel.train.vlm.generate import answer

    verdicts = score(problems, answer(model, processor, problems, max_new_tokens=4))
    return sum(ok for ok, _ in verdicts) / max(len(verdicts), 1)

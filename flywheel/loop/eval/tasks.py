"""Task accuracy: greedy answers to problems with known answers, checked by a verifier.

    python -m flywheel.loop.eval --spec flywheel.yaml      (reports ``accuracy/<task>``,
    ``n/<task>`` scored and ``quarantined/<task>`` records refused)

Each problem is a conversation (``flywheel.loop.tasks``: system and earlier turns kept, the
task's ``system_prompt`` first where it has none), rendered whole with the model's chat
template plus the assistant header (``flywheel.core.chat.render_prompts``), exactly what SFT
trained the model to continue. Prompts are generated in batches, left-padded so that every
row's last prompt token sits at the same position and generation continues from it; only the
new tokens are decoded, up to the end of the assistant turn (``<|im_end|>``) or
``max_new_tokens``. Decoding is greedy, so a score is a property of the checkpoint, not of a
sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from flywheel.core.chat import Messages, render_prompts
from flywheel.core.settings.train import EvalTask
from flywheel.loop.tasks import load_task_examples
from flywheel.loop.verifiers import score_rows
from flywheel.train.tokenizer import stop_token_ids


@dataclass
class TaskScore:
    """One task's result: every scored row, and the task records that could not be used."""

    name: str
    rows: list[dict[str, Any]]  # task, prompt, messages, answer, completion, correct, reason
    quarantine: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def correct(self) -> int:
        return sum(r["correct"] for r in self.rows)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def samples(self, k: int = 5) -> list[dict[str, Any]]:
        return self.rows[:k]


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Messages | str],
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy completions of ``prompts`` (conversations to continue; a string is one user
    turn), new tokens only, in order."""
    texts = render_prompts(tokenizer, prompts)  # fails first on a tokenizer without a template
    tokenizer.padding_side = "left"
    model.eval()
    device = next(model.parameters()).device
    stops = stop_token_ids(tokenizer)
    out: list[str] = []
    for lo in range(0, len(texts), batch_size):
        batch = texts[lo : lo + batch_size]
        # The template already wrote every special token; adding BOS/EOS would change it.
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(device)
        generated = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = generated[:, enc["input_ids"].shape[1] :]
        out += tokenizer.batch_decode(new, skip_special_tokens=True)
    return out


def evaluate_task(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: EvalTask, batch_size: int
) -> TaskScore:
    """Greedy answers to ``task``'s problems, each checked by the task's verifier; a wrong
    one keeps the verifier's reason. A ``kind: python`` function or registered kind must be
    importable (``flywheel.loop.plugins``; ``scores.score_tasks`` arranges it)."""
    loaded = load_task_examples(task)
    conversations = [e["messages"] for e in loaded.examples]
    completions = generate(model, tokenizer, conversations, task.max_new_tokens, batch_size)
    prompts = [e["prompt"] for e in loaded.examples]
    answers = [e["answer"] for e in loaded.examples]
    # The acceptance step's scoring (flywheel.loop.verifiers): one notion of correct.
    verdicts = score_rows(task.verifier, prompts, completions, answers, batch_size)
    rows = [
        {
            "task": task.name,
            "prompt": example["prompt"],
            "messages": example["messages"],
            "answer": example["answer"],
            "completion": completion,
            "correct": ok,
            "reason": reason,
        }
        for example, completion, (ok, reason) in zip(
            loaded.examples, completions, verdicts, strict=True
        )
    ]
    return TaskScore(task.name, rows, loaded.quarantine)

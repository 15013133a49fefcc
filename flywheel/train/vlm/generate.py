"""Greedy answers of a vision-language model to image questions, in batches.

    python -c "from flywheel.train.vlm.generate import answer; from flywheel.train.vlm.model \
import load_vlm; from flywheel.data.visual import shape_examples as s; m, p = load_vlm('VLM_DIR'); \
print(answer(m, p, s(4, 1, 3, 32, 1)))"

Each problem ``{"image", "prompt" | "messages"}`` is rendered with the processor's chat
template and ``add_generation_prompt`` (the prefix SFT trained the model to continue), left
padded, and decoded up to ``<|im_end|>`` or EOS (``flywheel.train.tokenizer.stop_token_ids``),
special tokens dropped.
"""

from __future__ import annotations

from typing import Any

import torch

from flywheel.core.chat import turn
from flywheel.train.tokenizer import stop_token_ids


def _conversation(problem: dict[str, Any]) -> list[dict[str, Any]]:
    turns = problem.get("messages") or [turn("user", problem["prompt"])]
    first_user = next(i for i, m in enumerate(turns) if m["role"] == "user")
    out = [dict(m) for m in turns]
    text = out[first_user]["content"]
    image = {"type": "image", "image": problem["image"]}
    out[first_user]["content"] = [image, {"type": "text", "text": text}]
    return out


@torch.no_grad()
def completions(
    model: Any,
    processor: Any,
    problems: list[dict[str, Any]],
    max_new_tokens: int = 8,
    batch_size: int = 32,
    n: int = 1,
    **sampling: Any,
) -> list[list[str]]:
    """``n`` completions of each problem, in order: greedy unless ``sampling`` says otherwise
    (``do_sample=True, temperature=...``, passed to ``generate``)."""
    model.eval()
    tokenizer = processor.tokenizer
    out: list[list[str]] = []
    for start in range(0, len(problems), batch_size):
        batch = problems[start : start + batch_size]
        texts = [
            processor.apply_chat_template(_conversation(p), add_generation_prompt=True)
            for p in batch
        ]
        inputs = processor(
            images=[p["image"] for p in batch],
            text=texts,
            padding=True,
            padding_side="left",
            return_tensors="pt",
            add_special_tokens=False,
        ).to(model.device)
        generated = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
            eos_token_id=stop_token_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            **({"do_sample": False} | sampling),
        )
        new = generated[:, inputs["input_ids"].shape[1] :]
        decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
        out += [decoded[i * n : (i + 1) * n] for i in range(len(batch))]
    return out


def answer(
    model: Any,
    processor: Any,
    problems: list[dict[str, Any]],
    max_new_tokens: int = 8,
    batch_size: int = 32,
) -> list[str]:
    """The greedy completion of each problem, in order."""
    done = completions(model, processor, problems, max_new_tokens, batch_size)
    return [texts[0] for texts in done]


@torch.no_grad()
def answer_logprobs(model: Any, processor: Any, problems: list[dict[str, Any]]) -> list[float]:
    """The log-probability the model gives each problem's ``answer`` (its assistant turn: the
    text and the closing ``<|im_end|>``, the tokens SFT and DPO train), one problem at a time."""
    model.eval()
    out = []
    for p in problems:
        conversation = [*_conversation(p), turn("assistant", p["answer"])]
        conversation[-1]["content"] = [{"type": "text", "text": p["answer"]}]
        batch = processor.apply_chat_template(
            [conversation],
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            return_assistant_tokens_mask=True,
        )
        mask = batch.pop("assistant_masks")[0, 1:].bool()
        logits = model(**batch.to(model.device)).logits[0, :-1]
        logps = torch.log_softmax(logits.float(), dim=-1)
        targets = batch["input_ids"][0, 1:]
        picked = logps.gather(1, targets[:, None])[:, 0]
        out.append(picked[mask].sum().item())
    return out

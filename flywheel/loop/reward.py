"""Reward-model scores for (prompt, completion) pairs, from a local sequence-classification model.

    python -c "from flywheel.loop.reward import reward_scores as r; print(r('RM', ['2+2?'], ['4']))"

The model directory holds a Hugging Face ``AutoModelForSequenceClassification`` with one
output (``num_labels=1``: a scalar reward, as TRL's ``RewardTrainer`` saves them) and its
tokenizer. Each pair is rendered with the tokenizer's chat template as a user turn and an
assistant turn, so the reward model reads exactly the conversation format the policy was
tuned on. Scores are computed in batches with padding; the model pools the last non-pad
token, so a batched score equals the pair's score alone (up to float rounding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_reward_model(path: Path) -> tuple[Any, Any]:
    """The model (eval mode) and tokenizer in ``path``; errors say what is missing."""
    try:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - transformers is a core dependency
        raise ImportError("verifier kind reward_model needs transformers and torch") from exc
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no reward model at {path} (expected a Hugging Face model directory with "
            "config.json); set acceptance.verifier.reward_model to one"
        )
    model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
    if model.config.num_labels != 1:
        raise ValueError(
            f"reward model at {path} has num_labels={model.config.num_labels}; a reward "
            "model gives one scalar per sequence (num_labels=1)"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.chat_template is None:
        raise ValueError(f"the tokenizer at {path} has no chat template to render pairs with")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        # Without it the model cannot find each row's last real token in a padded batch.
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def render(tokenizer: Any, prompt: str, completion: str) -> str:
    """The conversation the reward model scores: the prompt as user, the completion as
    assistant."""
    messages = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": completion},
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def reward_scores(
    path: Path, prompts: list[str], completions: list[str], batch_size: int = 16
) -> list[float]:
    """One scalar reward per (prompt, completion) pair, in input order."""
    import torch

    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if not prompts:
        return []
    model, tokenizer = load_reward_model(path)
    # Right-truncate to the model's context: an over-long pair is scored on its beginning.
    max_length = getattr(model.config, "max_position_embeddings", None)
    texts = [render(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
    scores: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=max_length is not None,
                max_length=max_length,
                return_tensors="pt",
                add_special_tokens=False,  # the chat template already wrote every marker
            )
            logits = model(**batch).logits
            scores += logits[:, 0].float().tolist()
    return scores

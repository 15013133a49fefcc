"""The ``lora`` block of a fine-tuning stage: train a low-rank adapter (peft) instead of every
weight, for models too large to fine-tune fully every cycle.

    flywheel check --explain | grep lora

It sits on ``sft`` (the seed SFT, and each cycle's retraining unless ``cycles.train.lora`` is
set), on ``cycles.preference_train`` (DPO/GRPO/RLOO; null: the cycle's) and on ``cycles.ppo``
(null: the cycle's). A LoRA stage publishes its adapter as a versioned artifact of its own and
the merged model as the stage's checkpoint (``flywheel.train.lora``). Like the other settings
models this imports neither torch nor peft.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The attention and MLP projections of a Llama decoder layer (transformers' names): every
# linear layer of the block, as the LoRA paper's best-performing setting adapts.
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Every module name a Llama causal LM has that LoRA can adapt (``flywheel check`` knows these
# without building the model; other model types are checked when the stage starts).
LLAMA_MODULES = frozenset({*LLAMA_TARGETS, "embed_tokens", "lm_head"})


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    enabled: bool = Field(
        False, description="Train a LoRA adapter (then merge it) instead of every weight."
    )
    r: int = Field(16, gt=0, description="Rank of each adapter's update B·A.")
    alpha: float = Field(
        32.0, gt=0, description="Scale: the update is (alpha / r)·B·A; 2·r is the usual choice."
    )
    dropout: float = Field(
        0.05, ge=0, lt=1, description="Dropout on the adapter's input while training."
    )
    target_modules: list[str] = Field(
        default_factory=lambda: list(LLAMA_TARGETS),
        min_length=1,
        description="Module names adapted (suffixes of the model's module paths); the default "
        "is a Llama's attention and MLP projections.",
    )

    @field_validator("target_modules")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        blank = [n for n in names if not n.strip()]
        if blank:
            raise ValueError("target_modules holds an empty name")
        return list(dict.fromkeys(names))

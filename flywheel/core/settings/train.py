"""Typed spec sections of the training plane: tokenizer, packing, model, pre-training, SFT, eval.

These models import neither torch nor transformers, so ``flywheel check`` stays fast; the
training entry points turn them into plain arguments (see ``flywheel.train.pretrain``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flywheel.core.settings.lora import LoraSettings
from flywheel.core.settings.verifier import VerifierSettings

_FUNCTION = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class TokenizerSettings(_Model):
    path: Path | None = Field(
        None, description="A local Hugging Face tokenizer directory; when set, none is trained."
    )
    vocab_size: int = Field(4096, ge=300, description="Byte-level BPE vocabulary size to train.")
    min_frequency: int = Field(2, ge=1, description="Fewest occurrences for a merge to be learnt.")
    max_docs: int = Field(
        100_000, gt=0, description="Documents streamed into BPE training; bounds its time."
    )
    added_tokens: list[str] = Field(
        default_factory=list,
        description="Strings that become one token each (not special: decoding keeps them), "
        "e.g. the fixed text of a tool call an agent writes every turn, which BPE splits into "
        "~20 tokens the model must generate one by one.",
    )

    @field_validator("added_tokens")
    @classmethod
    def _added(cls, tokens: list[str]) -> list[str]:
        blank = [t for t in tokens if not t.strip()]
        if blank:
            raise ValueError(f"added_tokens must not be empty or whitespace only: {blank!r}")
        repeated = sorted({t for t in tokens if tokens.count(t) > 1})
        if repeated:
            raise ValueError(f"added_tokens lists {repeated!r} more than once")
        return tokens


class PackingSettings(_Model):
    seq_len: int = Field(256, ge=8, description="Tokens per packed training sequence.")
    heldout_fraction: float = Field(
        0.02, ge=0.0, lt=0.5, description="Share of documents (by id hash) kept for evaluation."
    )
    shard_rows: int = Field(8192, gt=0, description="Packed sequences per Parquet shard.")
    batch_docs: int = Field(2000, gt=0, description="Documents tokenized per batch.")


def _tiny_llama() -> dict[str, Any]:
    # ~1.3M non-embedding parameters: a CPU pre-training run of a few hundred steps takes a
    # couple of minutes and still shows a clearly falling loss.
    return {
        "model_type": "llama",
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "tie_word_embeddings": True,
        "rope_theta": 10000.0,
    }


class ModelSettings(_Model):
    path: Path | None = Field(
        None, description="Start pre-training from this local checkpoint instead of a config."
    )
    config: dict[str, Any] = Field(
        default_factory=_tiny_llama,
        description="A transformers causal-LM config; vocab_size and max positions come from "
        "the tokenizer and packing.seq_len.",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel: SDPA picks flash/memory-efficient kernels itself."
    )

    @field_validator("config", mode="before")
    @classmethod
    def _over_default_llama(cls, config: Any) -> Any:
        # A partial Llama config (e.g. the override model.config.hidden_size=512) is merged
        # over the default; another model_type starts from transformers' own defaults.
        if isinstance(config, dict) and config.get("model_type", "llama") == "llama":
            return {**_tiny_llama(), **config}
        return config


Precision = Literal["auto", "bf16", "fp16", "fp32"]
OptimizerName = Literal["adamw", "adafactor", "muon"]
# The knobs of one optimizer are named after it; setting one while another optimizer is
# chosen would be silently ignored, so the validator below refuses it instead.
_KNOB_PREFIXES = {"muon": "muon_", "adafactor": "adafactor_"}


class OptimizerSettings(_Model):
    """Which optimizer a stage builds (``flywheel.train.optim.build_optimizer``) and its knobs.

    A knob left null takes the default named in its description: torch's own, except Muon's
    lr scaling (match_rms_adamw, so that Muon shares AdamW's lr).
    """

    optimizer: OptimizerName = Field(
        "adamw",
        description="adamw: two fp32 moments per parameter (8 bytes); adafactor: factored "
        "second moments, no momentum (lr is relative to each tensor's RMS: ~1e-2); muon: "
        "orthogonalised momentum on hidden matrices (4 bytes), AdamW on embeddings, head, "
        "norms and biases.",
    )
    muon_momentum: float | None = Field(None, ge=0, lt=1, description="Muon momentum (0.95).")
    muon_nesterov: bool | None = Field(None, description="Muon Nesterov momentum (true).")
    # torch.optim.Muon refuses 100 or more Newton-Schulz steps
    muon_ns_steps: int | None = Field(
        None, ge=1, le=99, description="Newton-Schulz iterations orthogonalising the update (5)."
    )
    muon_adjust_lr: Literal["match_rms_adamw", "original"] | None = Field(
        None,
        description="match_rms_adamw (default): Muon's update RMS matches AdamW's, so it shares "
        "AdamW's lr and weight decay; original: Keller Jordan's scaling, lr ~0.02.",
    )
    adafactor_beta2_decay: float | None = Field(
        None, le=0, description="Adafactor: second-moment decay 1 - step**beta2_decay (-0.8)."
    )
    adafactor_d: float | None = Field(
        None, ge=1, description="Adafactor: an update's RMS is clipped to this (1.0)."
    )

    @model_validator(mode="after")
    def _knobs_of_the_optimizer(self) -> OptimizerSettings:
        foreign = [
            name
            for optimizer, prefix in _KNOB_PREFIXES.items()
            if optimizer != self.optimizer
            for name in type(self).model_fields
            if name.startswith(prefix) and getattr(self, name) is not None
        ]
        if foreign:
            raise ValueError(
                f"{', '.join(foreign)} set, but optimizer is {self.optimizer!r}: these knobs "
                "belong to another optimizer and would be ignored; choose that optimizer or "
                "remove them"
            )
        return self


class TrainSettings(OptimizerSettings):
    """Optimisation settings shared by pre-training and SFT."""

    steps: int = Field(200, gt=0, description="Optimizer steps to train.")
    micro_batch: int = Field(8, gt=0, description="Sequences per process per forward pass.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches accumulated per optimizer step.")
    lr: float = Field(
        1e-3, gt=0, description="Peak learning rate (adafactor's is relative to weight RMS)."
    )
    muon_adamw_lr: float | None = Field(
        None,
        gt=0,
        description="Peak lr of muon's AdamW part: embeddings, head, norms, biases (null: lr).",
    )
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="Cosine decay ends at lr * min_lr_ratio."
    )
    warmup_steps: int = Field(20, ge=0, description="Linear warmup steps from 0 to lr.")
    weight_decay: float = Field(
        0.1, ge=0, description="Decoupled weight decay (of matrices; every optimizer)."
    )
    beta1: float = Field(0.9, gt=0, lt=1, description="AdamW beta1 (also muon's AdamW part).")
    beta2: float = Field(0.95, gt=0, lt=1, description="AdamW beta2; 0.95 is stabler for LMs.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon (adafactor has its own).")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0 turns it off.")
    precision: Precision = Field(
        "auto", description="auto: bf16 on CUDA that has it, else fp16 on CUDA, fp32 on CPU."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward: less memory, ~30% more compute."
    )
    compile: bool = Field(False, description="torch.compile the model (worth it on GPU).")
    save_every: int = Field(50, gt=0, description="Steps between resumable checkpoints.")
    keep_checkpoints: int = Field(2, ge=1, description="Resumable checkpoints kept on disk.")
    log_every: int = Field(10, gt=0, description="Steps between logged losses.")
    seed: int = Field(0, description="Seeds model init, data order and dropout.")
    num_processes: int = Field(1, ge=1, description="Data-parallel processes (accelerate).")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes per rank.")
    accelerate_config: Path | None = Field(
        None, description="An accelerate config file (multi-GPU, FSDP, DeepSpeed, multi-node)."
    )
    launcher: Literal["accelerate", "ray"] = Field(
        "accelerate",
        description="accelerate: `accelerate launch` on this machine; ray: num_processes Ray "
        "Train workers on the cluster of ray.address (flywheel.train.ray_launch), restarted "
        "from the last checkpoint when a worker or its node is lost.",
    )
    max_restarts: int = Field(
        3, ge=0, description="launcher ray: restarts of the workers after one is lost."
    )

    @model_validator(mode="after")
    def _one_launcher(self) -> Self:
        if self.launcher == "ray" and self.accelerate_config is not None:
            raise ValueError(
                "accelerate_config configures `accelerate launch`; with launcher: ray the "
                "workers are Ray Train's (num_processes of them, gloo or NCCL DDP): unset one"
            )
        return self


class PretrainSettings(TrainSettings):
    pass


class AdditionTask(_Model):
    """Fields of the built-in ``addition`` task (flywheel.data.arithmetic.addition_examples)."""

    min_digits: int = Field(1, ge=1, description="Fewest operand digits (kind addition).")
    max_digits: int = Field(3, ge=1, description="Most operand digits (kind addition).")
    width: int = Field(5, ge=1, description="Operands are zero-padded to this many digits.")

    @model_validator(mode="after")
    def _digits(self) -> AdditionTask:
        if self.min_digits > self.max_digits:
            raise ValueError("min_digits must not exceed max_digits")
        if self.max_digits > self.width:
            raise ValueError("max_digits must not exceed width (operands are padded to width)")
        return self


class SftData(AdditionTask):
    kind: Literal["jsonl", "parquet", "arithmetic", "addition", "python"] = Field(
        "arithmetic",
        description="jsonl/parquet of prompt/response or messages, built-in arithmetic "
        "('What is a + b?') or addition (padded reversed sums), or python: records made by "
        "`function`.",
    )
    path: Path | None = Field(None, description="The jsonl/parquet file (kind jsonl/parquet).")
    function: str | None = Field(
        None,
        description="'package.module:function' called as function(num_examples=, seed=, "
        "**settings) and returning SFT records (kind python), e.g. "
        "flywheel.loop.agents.teacher:conversations for an environment's scripted episodes.",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of `function` (kind python)."
    )
    num_examples: int = Field(2000, gt=0, description="Built-in examples to generate.")
    max_operand: int = Field(20, gt=0, description="Largest operand of built-in problems.")
    seed: int = Field(0, description="Seed of the built-in generator.")
    extra: list[SftData] = Field(
        default_factory=list,
        description="More data sets appended to this one (e.g. a few harder built-in problems).",
    )

    @model_validator(mode="after")
    def _path_for_files(self) -> SftData:
        if self.kind in ("jsonl", "parquet") and self.path is None:
            raise ValueError(f"sft.data.path is required for kind {self.kind!r}")
        if self.kind == "python" and not _FUNCTION.fullmatch(self.function or ""):
            raise ValueError("sft.data.function must be 'package.module:function' for kind python")
        return self


class SftSettings(TrainSettings):
    steps: int = Field(100, gt=0, description="Optimizer steps to train.")
    lr: float = Field(
        3e-4, gt=0, description="Peak learning rate (adafactor's is relative to weight RMS)."
    )
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps from 0 to lr.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay of matrices.")
    max_length: int = Field(256, ge=8, description="Longest tokenized conversation kept.")
    batching: Literal["random", "balanced"] = Field(
        "random",
        description="random: each micro-batch is micro_batch random conversations, padded to "
        "its longest; balanced: each step's micro_batch x grad_accum random conversations are "
        "sorted by length and split into grad_accum micro-batches of about equal cost (fewer "
        "of the long ones, more of the short), so less padding for the same step: its loss is "
        "still the mean over all of them (micro_batch is then their average size). Needs "
        "grad_accum > 1.",
    )
    data: SftData = Field(default_factory=SftData, description="Instruction-response pairs.")
    lora: LoraSettings = Field(
        default_factory=LoraSettings,
        description="Train a LoRA adapter and publish it beside the merged model "
        "(flywheel.core.settings.lora); cycles inherit it unless cycles.train.lora is set.",
    )

    @model_validator(mode="after")
    def _balanced_needs_accumulation(self) -> Self:
        if self.batching == "balanced" and self.grad_accum < 2:
            raise ValueError(
                "batching: balanced splits each step's conversations into grad_accum "
                "micro-batches of similar length, and grad_accum is 1: nothing to split. Set "
                "grad_accum (e.g. 4, with micro_batch a quarter of the step's conversations) "
                "or batching: random"
            )
        return self


# The default eval task's name, which the default promotion gate (cycles.gate.metric,
# accuracy/<name>) refers to: one constant, so the two defaults cannot drift apart.
DEFAULT_EVAL_TASK = "arithmetic"
# Problems a built-in task generates when num_examples is unset: enough that its accuracy
# has a standard error of at most 0.05 (sqrt(p(1-p)/n) <= sqrt(0.25/100)), few enough for CPU.
BUILTIN_EVAL_EXAMPLES = 100
# An eval task's verifier when unset: the built-in tasks' answers are numbers.
DEFAULT_EVAL_VERIFIER = "numeric"


class EvalTask(AdditionTask):
    name: str = Field(DEFAULT_EVAL_TASK, description="Task name; metadata key accuracy/<name>.")
    kind: Literal["jsonl", "arithmetic", "addition"] = Field(
        "arithmetic",
        description="jsonl records (messages or prompt, with an answer; flywheel.core.chat), "
        "or built-in arithmetic or addition problems.",
    )
    path: Path | None = Field(None, description="The jsonl file (kind jsonl).")
    num_examples: int | None = Field(
        None,
        gt=0,
        description="Problems evaluated: the first usable ones of a jsonl file (null: all of "
        f"them); built-in kinds generate this many (null: {BUILTIN_EVAL_EXAMPLES}).",
    )
    max_operand: int = Field(20, gt=0, description="Largest operand of built-in problems.")
    seed: int = Field(1234, description="Seed of the built-in generator (differs from SFT's).")
    verifier: VerifierSettings = Field(
        default_factory=lambda: VerifierSettings(kind=DEFAULT_EVAL_VERIFIER),
        description="How a greedy answer is judged correct: the same setting as "
        "acceptance.verifier, or its kind alone ('exact'). The task-level key 'pattern' is "
        "kept as an alias of verifier.pattern.",
    )
    max_new_tokens: int = Field(16, gt=0, description="Greedy tokens generated per prompt.")
    system_prompt: str | None = Field(
        None,
        description="A system turn put first in every problem's conversation that has none "
        "(null: none), to evaluate under the system prompt the model was fine-tuned with.",
    )

    @model_validator(mode="before")
    @classmethod
    def _pattern_alias(cls, data: Any) -> Any:
        """``pattern`` beside ``verifier`` (the spec's old spelling) moves into the verifier."""
        if not isinstance(data, dict) or "pattern" not in data:
            return data
        data = dict(data)
        pattern = data.pop("pattern")
        verifier = data.get("verifier", DEFAULT_EVAL_VERIFIER)
        if pattern is None:
            return data
        if isinstance(verifier, BaseModel):
            verifier = verifier.model_dump(exclude_unset=True)
        if isinstance(verifier, str):
            verifier = {"kind": verifier}
        if isinstance(verifier, dict):
            if verifier.get("pattern") not in (None, pattern):
                raise ValueError("pattern and verifier.pattern differ: set only verifier.pattern")
            data["verifier"] = {**verifier, "pattern": pattern}
        return data

    @field_validator("verifier")
    @classmethod
    def _one_answer(cls, verifier: VerifierSettings) -> VerifierSettings:
        if verifier.kind == "self_consistency":
            raise ValueError(
                "self_consistency votes across several samples of a prompt, and eval scores one "
                "greedy answer: use a kind that checks one answer (exact, numeric, contains, "
                "regex, python, reward_model or a registered one)"
            )
        return verifier


class EvalSettings(_Model):
    perplexity_batches: int = Field(20, gt=0, description="Held-out batches for perplexity.")
    micro_batch: int = Field(8, gt=0, description="Sequences per evaluation forward pass.")
    tasks: list[EvalTask] = Field(
        default_factory=lambda: [EvalTask()], description="Task evaluations (accuracy)."
    )

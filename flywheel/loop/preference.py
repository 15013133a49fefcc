"""Preference training after a cycle's SFT, with TRL: DPO on pairs, GRPO or RLOO with a reward.

    accelerate launch -m flywheel.loop.retrain --spec flywheel.yaml --cycle 3 --parent DIR \
        --set cycles.preference=grpo                  # runs it after the cycle's SFT
    python -c "from flywheel.loop.preference import verifier_reward; \
from flywheel.core.settings.loop import VerifierSettings as V; \
print(verifier_reward(V(kind='numeric'))(['1+1'], ['it is 2'], answer=['2']))"

``flywheel.loop.retrain`` runs it per ``cycles.preference``; the functions here take plain
arguments, so a notebook can run them on any model directory:

- ``dpo``: ``DPOTrainer`` on accepted/rejected completions of the same prompt, in TRL's
  conversational format (``prompt``: the conversation the generation continued, system and
  earlier turns included; ``chosen``/``rejected``: the assistant's answer).
  The reference model is the starting model, frozen; ``beta`` is the DPO temperature.
- ``grpo`` / ``rloo``: ``GRPOTrainer`` / ``RLOOTrainer`` sample ``num_generations``
  completions per prompt and push up those that score above their group's mean (GRPO) or the
  mean of the others (RLOO, leave-one-out). The reward is the acceptance verifier itself
  (``verifier_reward``: 1.0 correct, 0.0 not), so what the flywheel accepts is what RL
  optimises. ``beta`` weighs the KL penalty to the starting model.

Configs follow ``flywheel.train.sft``'s mapping of settings (fp32 on CPU, activation
checkpointing from the settings, no external loggers); checkpoints are resumable the same way.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from flywheel.core.chat import Messages, turn
from flywheel.core.report import Reporter, loss_curve
from flywheel.core.settings.loop import PreferenceSettings, VerifierSettings
from flywheel.core.settings.lora import LoraSettings
from flywheel.train import lora
from flywheel.train.finetune import (
    ReportLogs,
    prepare_tokenizer,
    resume_point,
    stop_on_turn_end,
    trainer_arguments,
    training_precision,
    use_optimizer,
)
from flywheel.train.fused_head import score_labelled_positions_only
from flywheel.train.sft_resume import ManifestOnSave

KINDS = ("dpo", "grpo", "rloo")
REWARDS = ("exact", "numeric", "python")  # verifier kinds usable as a reward
# What each trainer logs that says whether preference training worked, beside its loss.
TRACKED = {
    "dpo": ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"),
    "grpo": ("reward", "reward_std", "kl", "completions/mean_length"),
    "rloo": ("reward", "reward_std", "kl", "completions/mean_length"),
}
Reward = Callable[..., list[float]]


def _turns(prompt: Messages | str) -> Messages:
    return [turn("user", prompt)] if isinstance(prompt, str) else prompt


def dpo_example(prompt: Messages | str, chosen: str, rejected: str) -> dict[str, Any]:
    """One DPO record in TRL's conversational format: ``prompt`` is the conversation both
    answers continue (system and earlier turns included; a string is one user turn)."""
    return {
        "prompt": _turns(prompt),
        "chosen": [turn("assistant", chosen)],
        "rejected": [turn("assistant", rejected)],
    }


def rl_example(prompt: Messages | str, answer: str) -> dict[str, Any]:
    """One GRPO/RLOO prompt (a conversation, or a string: one user turn); ``answer`` reaches
    the reward function as a keyword column."""
    return {"prompt": _turns(prompt), "answer": answer}


def _text(value: Any) -> str:
    # Conversational prompts and completions are message lists; the last turn is the text
    # (of a prompt: its last user turn, what a verifier's ``prompt`` always was).
    return value[-1]["content"] if isinstance(value, list) else value


def verifier_reward(verifier: VerifierSettings) -> Reward:
    """TRL's reward function for the acceptance verifier: 1.0 where
    ``flywheel.loop.verifiers.judge`` accepts the completion (the same judge as acceptance), else
    0.0.

    Only verifiers that judge one completion against its prompt's reference answer qualify:
    a majority vote (self_consistency) among one prompt's samples would reward agreement,
    not correctness, and a reward model would be reloaded on every step.
    """
    from flywheel.loop.verifiers import judge, load_function

    if verifier.kind not in REWARDS:
        raise ValueError(
            f"acceptance.verifier.kind {verifier.kind!r} cannot be a GRPO/RLOO reward: it does "
            f"not judge one completion against a reference answer; use {', '.join(REWARDS)}"
        )
    if verifier.kind == "python":
        load_function(verifier.function or "")  # a bad path fails now, not mid-training

    def reward(
        prompts: list[Any], completions: list[Any], answer: list[str | None], **_: Any
    ) -> list[float]:
        rows = pl.DataFrame(
            {
                "prompt": [_text(p) for p in prompts],
                "completion": [_text(c) for c in completions],
                "answer": pl.Series(answer, dtype=pl.String),
            }
        )
        return judge(verifier, rows)["verified"].cast(pl.Float64).to_list()

    reward.__name__ = f"verifier_{verifier.kind}"  # TRL logs rewards/<name>/mean
    return reward


def check_settings(kind: str, settings: PreferenceSettings, num_processes: int = 1) -> None:
    """Refuse settings TRL would refuse later, naming the spec keys (before SFT spends time)."""
    if kind not in KINDS:
        raise ValueError(f"unknown preference kind {kind!r}; expected one of {', '.join(KINDS)}")
    completions = settings.micro_batch * settings.grad_accum * num_processes
    if kind != "dpo" and completions % settings.num_generations:
        raise ValueError(
            f"cycles.preference_train: micro_batch x grad_accum x processes = {completions} "
            f"completions per step is not a multiple of num_generations "
            f"({settings.num_generations}); {kind.upper()} scores each prompt's completions "
            "as one group, so a step must hold whole groups"
        )


def preference_config(
    kind: str,
    settings: PreferenceSettings,
    output_dir: Path | str,
    mixed_precision: str = "no",
    **extra: Any,
) -> Any:
    """TRL's DPOConfig, GRPOConfig or RLOOConfig for ``settings``; ``extra``: more of the
    config's own arguments (GRPO on an environment: ``max_tool_calling_iterations``)."""
    import trl

    check_settings(kind, settings, int(os.environ.get("WORLD_SIZE", "1")))
    common = trainer_arguments(settings, Path(output_dir), mixed_precision)
    if kind == "dpo":
        return trl.DPOConfig(**common, beta=settings.beta, max_length=settings.max_length)
    config = trl.GRPOConfig if kind == "grpo" else trl.RLOOConfig
    return config(
        **common,
        beta=settings.beta,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_new_tokens,
        temperature=settings.temperature,
        **extra,
    )


def build_preference_trainer(
    kind: str,
    config: Any,
    model_path: Path,
    attn_implementation: str,
    examples: Sequence[dict[str, Any]],
    reward: Reward | None = None,
    callbacks: Sequence[Any] = (),
    lora_settings: LoraSettings | None = None,
) -> Any:
    """The TRL trainer of ``kind`` on the model (and tokenizer) in ``model_path``; with
    ``lora_settings`` enabled it trains a LoRA adapter, and its reference model is the same
    model with the adapter disabled (TRL's peft path), not a second copy."""
    import datasets
    import transformers
    import trl

    from flywheel.train.model import load_model
    from flywheel.train.tokenizer import load_tokenizer

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    tokenizer = prepare_tokenizer(load_tokenizer(model_path))
    model = load_model(model_path, attn_implementation)
    stop_on_turn_end(model, tokenizer)  # sampled completions end with the assistant's turn
    score_labelled_positions_only()  # TRL's LM head, on CPU too
    common = {
        "model": model,
        "args": config,
        "train_dataset": datasets.Dataset.from_list(list(examples)),
        "processing_class": tokenizer,
        "callbacks": [ManifestOnSave(), *callbacks],
        **lora.peft_arguments(model, lora_settings, "cycles.preference_train.lora"),
    }
    if kind == "dpo":
        trainer = trl.DPOTrainer(**common)
    else:
        if reward is None:
            raise ValueError(f"{kind.upper()} needs a reward function")
        trainer_class = trl.GRPOTrainer if kind == "grpo" else trl.RLOOTrainer
        trainer = trainer_class(reward_funcs=reward, **common)
    trainer.remove_callback(transformers.PrinterCallback)  # ReportLogs reports the logs
    return trainer


def preference_metrics(
    kind: str, state: Any, runtime: float, callback: ReportLogs, examples: int
) -> dict[str, Any]:
    """The run's loss summary and the mean and last of what ``TRACKED`` names, as
    ``preference/...`` keys (the cycle's metrics also hold SFT's)."""
    logs = state.log_history
    losses = [(h["step"], h["loss"]) for h in logs if "loss" in h]
    out: dict[str, Any] = {
        "preference": kind,
        "preference/examples": examples,
        "preference/steps": state.global_step,
        "preference/first_loss": losses[0][1] if losses else None,
        "preference/final_loss": losses[-1][1] if losses else None,
        "preference/loss_curve": loss_curve(losses),
        "preference/train_seconds": round(runtime, 3),
        "preference/resumed_from_step": callback.start_step,
    }
    return out | tracked_means(logs, TRACKED[kind], "preference")


def tracked_means(logs: list[dict[str, Any]], names: Sequence[str], prefix: str) -> dict:
    """``<prefix>/<name>`` (mean over the run's logs, NaN skipped) and ``<prefix>/last/<name>``
    of each logged ``name`` of a TRL trainer's ``log_history``."""
    out: dict[str, float] = {}
    for key in names:
        values = [h[key] for h in logs if key in h and not math.isnan(h[key])]
        if values:
            out[f"{prefix}/{key}"] = sum(values) / len(values)
            out[f"{prefix}/last/{key}"] = values[-1]
    return out


def train_preference(
    kind: str,
    settings: PreferenceSettings,
    model_path: Path,
    examples: Sequence[dict[str, Any]],
    work: Path,
    staging: Path,
    reporter: Reporter,
    attn_implementation: str = "sdpa",
    reward: Reward | None = None,
    adapter: Path | None = None,
) -> dict[str, Any]:
    """Train ``kind`` from ``model_path`` on every rank (resuming from ``work``), save the
    model and its tokenizer to ``staging`` (one path for all ranks); the metrics. With
    ``settings.lora`` on, ``staging`` gets the merged model and ``adapter`` (default
    ``lora.adapter_dir(work, kind)``) the adapter."""
    from accelerate import PartialState

    precision = training_precision(settings, reporter)
    config = preference_config(kind, settings, work, precision)
    state = PartialState()  # set up by the config
    resume = resume_point(work, reporter, state.is_main_process)
    state.wait_for_everyone()
    callback = ReportLogs(reporter)
    trainer = build_preference_trainer(
        kind, config, model_path, attn_implementation, examples, reward, [callback], settings.lora
    )
    use_optimizer(trainer, settings)
    reporter.info(f"{kind.upper()}: {len(examples)} examples, {settings.steps} steps")
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    metrics = preference_metrics(
        kind, trainer.state, output.metrics["train_runtime"], callback, len(examples)
    )
    if lora.enabled(settings.lora):
        adapter = adapter or lora.adapter_dir(work, kind)
        numbers = lora.save_trained(
            trainer, settings.lora, model_path, staging, adapter, attn_implementation
        )
        return metrics | {f"preference/{k}": v for k, v in numbers.items()}
    if state.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    state.wait_for_everyone()
    trainer.save_model(str(staging))  # collective: it gathers sharded weights
    state.wait_for_everyone()
    return metrics

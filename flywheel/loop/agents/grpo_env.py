"""Multi-turn GRPO on an environment, online, with TRL's ``GRPOTrainer(environment_factory=...)``.

    python -m pytest -q tests/loop/agents/test_grpo_env.py
    python -c "from flywheel.loop.agents.grpo_env import train_grpo_env, EnvRLSettings; \
from flywheel.envs.guess import NumberGuess, train_episodes; \
print(train_grpo_env('CKPT', 'OUT', NumberGuess, train_episodes(64, max_n=16), EnvRLSettings()))"

For each episode row (``prompt`` + the environment's ``reset`` keywords) TRL resets one
environment per generation, renders the prompt with the environment's public methods as
``tools``, and loops: generate, parse the ``<tool_call>`` blocks, call the tools, append their
results as tool turns (masked out of the loss: ``tool_mask`` 0), generate again, until the model
answers without a call or ``max_tool_calling_iterations``. The environment's ``get_reward()``
scores the whole episode, and GRPO pushes up the episodes that beat their group's mean.
``list_tools=False`` renders the prompt without the tools listing (TRL passes
``chat_template_kwargs`` to every rendering), as the collector does for an agent with its own
system prompt, and ``turn_tokens`` caps each turn as the collector's ``max_new_tokens`` does:
the model plays GRPO's episodes in the format it learned and is evaluated in. Unlike the
collector, TRL ends an episode only when a turn makes no call (or at the budget), so a model
that calls again after the environment is done plays on against ``error:`` replies; the reward
is the environment's either way.

What TRL requires of the tokenizer, and how ours meets it (``tool_tokenizer``):

- a chat template that renders ``tools=``, assistant ``tool_calls`` and ``tool`` turns
  (``trl.chat_template_utils.supports_tool_calling``, checked in ``GRPOTrainer.__init__``):
  ``flywheel.train.tokenizer.CHAT_TEMPLATE`` does, and renders everything else as before, so a
  checkpoint whose tokenizer has the older template gets the current one;
- a ``response_template`` to parse tool calls (``add_response_schema`` knows only the templates
  of published model families and raises on ours): ``tokenizer.RESPONSE_TEMPLATE``;
- the end of turn as ``eos_token``: ``GRPOTrainer._get_tool_suffix_ids`` cuts the rendered
  conversation after the last ``eos_token`` to find where the tool turn's tokens begin. Ours is
  ``<|endoftext|>`` (the document separator), which a conversation never holds, so the cut
  would fall after the ``\\n`` that follows ``<|im_end|>`` and every tool turn would lose it.
  TRL is handed a copy whose ``eos_token`` is ``<|im_end|>``; the saved tokenizer is the
  original.

Settings map to ``GRPOConfig`` as ``flywheel.loop.preference`` maps them (fp32 on CPU, no
external loggers), and a rerun resumes from the newest complete Trainer checkpoint in ``work``.
"""

from __future__ import annotations

import copy
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from flywheel.core.report import Reporter, loss_curve
from flywheel.core.settings.loop import PreferenceSettings
from flywheel.loop.preference import preference_config, tracked_means
from flywheel.train import lora
from flywheel.train.finetune import (
    ReportLogs,
    prepare_tokenizer,
    resume_point,
    stop_on_turn_end,
    training_precision,
    use_optimizer,
)
from flywheel.train.fused_head import score_labelled_positions_only
from flywheel.train.sft_resume import ManifestOnSave

# What TRL logs that says whether the run worked, beside its loss.
TRACKED = (
    "reward",
    "reward_std",
    "frac_reward_zero_std",
    "kl",
    "tools/call_frequency",
    "tools/failure_frequency",
    "completions/mean_length",
)


class EnvRLSettings(PreferenceSettings):
    """GRPO on an environment: the preference run's settings, with episode-sized completions."""

    max_new_tokens: int = Field(
        256,
        gt=0,
        description="Tokens of one episode's whole completion: every model turn and every "
        "tool result between them (TRL's max_completion_length).",
    )
    max_tool_calling_iterations: int = Field(
        8, ge=1, description="Rounds of tool calls per episode before TRL stops it."
    )
    turn_tokens: int | None = Field(
        None,
        gt=0,
        description="Tokens one model turn may generate (the collector's max_new_tokens); "
        "null: a turn may fill the whole max_new_tokens.",
    )
    list_tools: bool = Field(
        True,
        description="Open the prompt with the tools' JSON-schema listing (false: render the "
        "episode's own messages only, as the collector does for an agent with its own "
        "system prompt).",
    )


def tool_tokenizer(
    tokenizer: Any, reporter: Reporter | None = None, list_tools: bool = True
) -> tuple[Any, Any]:
    """``tokenizer`` made ready for TRL's tool loop, and the copy TRL is given (module
    docstring): ``(to_save, for_trl)``. A template that renders like ours, with and without
    tools, is an earlier version of ours (e.g. from before ``list_tools``) and gets the current
    one. ``list_tools=False``: the template must then render a conversation offered tools as
    it renders it without them."""
    from trl.chat_template_utils import supports_tool_calling

    from flywheel.train.tokenizer import CHAT_TEMPLATE, IM_END, RESPONSE_TEMPLATE

    tokenizer = prepare_tokenizer(tokenizer)  # ChatML tokens checked
    if not supports_tool_calling(tokenizer):
        if reporter is not None:
            reporter.info("the tokenizer's chat template cannot render tool calls: using ours")
        tokenizer.chat_template = CHAT_TEMPLATE
    elif tokenizer.chat_template != CHAT_TEMPLATE and _renders_like(tokenizer, CHAT_TEMPLATE):
        tokenizer.chat_template = CHAT_TEMPLATE
    if not list_tools and not _hides_listing(tokenizer, tokenizer.chat_template):
        raise ValueError(
            "the checkpoint's chat template ignores list_tools=False: GRPO would show the model "
            "a tools listing the collector never renders (use flywheel's CHAT_TEMPLATE)"
        )
    if tokenizer.chat_template == CHAT_TEMPLATE and tokenizer.response_template is None:
        tokenizer.response_template = RESPONSE_TEMPLATE
    for_trl = copy.deepcopy(tokenizer)
    for_trl.eos_token = IM_END
    return tokenizer, for_trl


# A conversation with every kind of turn, to compare renderings of it.
_PROBE = [
    {"role": "system", "content": "Play."},
    {"role": "user", "content": "Go."},
    {"role": "assistant", "content": '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'},
    {"role": "tool", "name": "f", "content": "ok"},
]
_PROBE_TOOL = {"type": "function", "function": {"name": "f", "description": "F.", "parameters": {}}}


def _renders(tokenizer: Any, template: str, **kwargs: Any) -> str:
    return tokenizer.apply_chat_template(
        _PROBE, chat_template=template, add_generation_prompt=True, tokenize=False, **kwargs
    )


def _renders_like(tokenizer: Any, template: str) -> bool:
    """Whether the tokenizer's template renders the probe as ``template`` does, offered tools
    (listed) or not."""
    own, tools = tokenizer.chat_template, {"tools": [_PROBE_TOOL]}
    same = _renders(tokenizer, own) == _renders(tokenizer, template)
    return same and _renders(tokenizer, own, **tools) == _renders(tokenizer, template, **tools)


def _hides_listing(tokenizer: Any, template: str) -> bool:
    """Whether ``template`` renders the probe offered tools with ``list_tools=False`` exactly
    as it renders it without tools."""
    hidden = _renders(tokenizer, template, tools=[_PROBE_TOOL], list_tools=False)
    return hidden == _renders(tokenizer, template)


def grpo_env_config(settings: EnvRLSettings, work: Path | str, mixed_precision: str = "no") -> Any:
    """TRL's GRPOConfig for ``settings``, checkpointing into ``work``: the preference stage's
    GRPO config, with the environment's tool-calling rounds. TRL hands ``chat_template_kwargs``
    to every ``apply_chat_template`` call (the prompt and each tool turn), and
    ``generation_kwargs`` override its per-call generation settings (each turn is one call)."""
    extra: dict[str, Any] = {"max_tool_calling_iterations": settings.max_tool_calling_iterations}
    if not settings.list_tools:
        extra["chat_template_kwargs"] = {"list_tools": False}
    if settings.turn_tokens is not None:
        extra["generation_kwargs"] = {"max_new_tokens": settings.turn_tokens}
    return preference_config("grpo", settings, work, mixed_precision, **extra)


def build_grpo_env_trainer(
    config: Any,
    model_path: Path,
    env_factory: Callable[[], Any],
    episodes: Sequence[dict[str, Any]],
    attn_implementation: str = "sdpa",
    callbacks: Sequence[Any] = (),
    reporter: Reporter | None = None,
    lora_settings: Any = None,
) -> tuple[Any, Any]:
    """The GRPOTrainer on the checkpoint in ``model_path`` and the tokenizer to save with it."""
    import datasets
    import transformers
    import trl

    from flywheel.train.model import load_model
    from flywheel.train.tokenizer import load_tokenizer

    if not episodes:
        raise ValueError("no episodes to train on")
    missing = [i for i, e in enumerate(episodes) if "prompt" not in e]
    if missing:
        raise ValueError(f"episodes {missing[:5]} have no 'prompt' (TRL renders it)")
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    listing = (config.chat_template_kwargs or {}).get("list_tools", True)
    tokenizer, for_trl = tool_tokenizer(load_tokenizer(model_path), reporter, listing)
    model = load_model(model_path, attn_implementation)
    stop_on_turn_end(model, tokenizer)  # a turn ends at <|im_end|> (or EOS)
    score_labelled_positions_only()  # TRL's LM head, on CPU too
    trainer = trl.GRPOTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(list(episodes)),
        processing_class=for_trl,
        environment_factory=env_factory,
        callbacks=[ManifestOnSave(), *callbacks],
        **lora.peft_arguments(model, lora_settings, "cycles.preference_train.lora"),
    )
    trainer.remove_callback(transformers.PrinterCallback)  # ReportLogs reports the logs
    return trainer, tokenizer


def grpo_env_metrics(state: Any, runtime: float, callback: ReportLogs, episodes: int) -> dict:
    """The reward curve, the loss summary, and the mean and last of ``TRACKED``."""
    logs = state.log_history
    rewards = [(h["step"], h["reward"]) for h in logs if not math.isnan(h.get("reward", math.nan))]
    losses = [(h["step"], h["loss"]) for h in logs if "loss" in h]
    out: dict[str, Any] = {
        "grpo_env/episodes": episodes,
        "grpo_env/steps": state.global_step,
        "grpo_env/reward_curve": loss_curve(rewards, points=50),
        "grpo_env/first_reward": rewards[0][1] if rewards else None,
        "grpo_env/final_reward": rewards[-1][1] if rewards else None,
        "grpo_env/first_loss": losses[0][1] if losses else None,
        "grpo_env/final_loss": losses[-1][1] if losses else None,
        "grpo_env/train_seconds": round(runtime, 3),
        "grpo_env/resumed_from_step": callback.start_step,
    }
    return out | tracked_means(logs, TRACKED, "grpo_env")


def train_grpo_env(
    parent_dir: Path | str,
    out_dir: Path | str,
    env_factory: Callable[[], Any],
    episodes: Sequence[dict[str, Any]],
    settings: EnvRLSettings,
    reporter: Reporter | None = None,
    work: Path | str | None = None,
    attn_implementation: str = "sdpa",
    adapter: Path | None = None,
) -> dict[str, Any]:
    """GRPO from the checkpoint in ``parent_dir`` on ``episodes`` of ``env_factory``'s
    environment; the model and its tokenizer are saved to ``out_dir``. Trainer checkpoints go
    to ``work`` (default: ``<out_dir>.work`` beside it), and a rerun resumes from them.
    Returns the metrics, the reward curve included. With ``settings.lora`` on, ``out_dir``
    gets the merged model and ``adapter`` (default ``<work>/adapter``) the adapter."""
    from accelerate import PartialState

    reporter = reporter or Reporter()
    out_dir = Path(out_dir)
    work = Path(work) if work is not None else out_dir.with_name(f"{out_dir.name}.work")
    precision = training_precision(settings, reporter)
    config = grpo_env_config(settings, work, precision)
    state = PartialState()  # set up by the config
    resume = resume_point(work, reporter, state.is_main_process)
    state.wait_for_everyone()
    callback = ReportLogs(reporter)
    trainer, tokenizer = build_grpo_env_trainer(
        config, Path(parent_dir), env_factory, episodes, attn_implementation, [callback], reporter,
        settings.lora,
    )  # fmt: skip
    use_optimizer(trainer, settings)
    reporter.info(f"GRPO on an environment: {len(episodes)} episodes, {settings.steps} steps")
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    metrics = grpo_env_metrics(
        trainer.state, output.metrics["train_runtime"], callback, len(episodes)
    )
    if lora.enabled(settings.lora):
        adapter = adapter or work / "adapter"
        numbers = lora.save_trained(
            trainer, settings.lora, Path(parent_dir), out_dir, adapter, attn_implementation,
            tokenizer,
        )  # fmt: skip
        return metrics | {f"grpo_env/{k}": v for k, v in numbers.items()}
    if state.is_main_process:
        shutil.rmtree(out_dir, ignore_errors=True)
    state.wait_for_everyone()
    trainer.save_model(str(out_dir))  # collective: it gathers sharded weights
    if state.is_main_process:
        tokenizer.save_pretrained(out_dir)  # the original eos, over the copy TRL saved
    state.wait_for_everyone()
    return metrics

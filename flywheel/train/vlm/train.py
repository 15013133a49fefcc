"""Fine-tune a vision-language model with TRL: SFT on image conversations, DPO on image pairs.

    python -c "from flywheel.train.vlm.train import sft_example; from flywheel.data.visual \
import shape_examples as s; e = s(1, 1, 3, 32, 0)[0]; print(sft_example(e['image'], \
e['prompt'], e['answer'])['messages'])"

Both take plain arguments (settings, a model directory of ``flywheel.train.vlm.model``, the
examples, a work and a staging directory), like ``flywheel.loop.preference.train_preference``:

- ``train_vlm_sft``: TRL's ``SFTTrainer`` with the model's ``LlavaProcessor`` as processing
  class. Examples are ``{"images": [PIL image], "messages": [...]}`` (``sft_example``), so TRL
  collates them with its ``DataCollatorForVisionLanguageModeling``: images become pixel values
  batch by batch and ``assistant_only_loss`` masks everything but the assistant's text and its
  ``<|im_end|>`` (the ``{% generation %}`` span of ``VLM_CHAT_TEMPLATE``, re-aligned by
  transformers after the ``<image>`` placeholders are expanded).
- ``train_vlm_dpo``: TRL's ``DPOTrainer`` on ``{"images", "prompt", "chosen", "rejected"}``
  (``dpo_example``: an accepted and a rejected answer to the same image and question), collated
  by its ``DataCollatorForVisionPreference``; the frozen reference is the starting model.

Training is resumable as the text stages are (``flywheel.train.finetune``): checkpoints every
``save_every`` steps under ``work``, a rerun resumes from the newest complete one, and the
model and its processor are saved to ``staging``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from flywheel.core.chat import Messages, turn
from flywheel.core.report import Reporter, loss_curve
from flywheel.core.settings.loop import PreferenceSettings
from flywheel.core.settings.train import SftSettings, TrainSettings
from flywheel.train.finetune import ReportLogs, resume_point, trainer_arguments, training_precision
from flywheel.train.fused_head import score_labelled_positions_only
from flywheel.train.sft_resume import ManifestOnSave

# What DPO logs that says whether it worked, beside its loss (as flywheel.loop.preference).
DPO_TRACKED = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


def sft_example(image: Image.Image, prompt: str | Messages, answer: str) -> dict[str, Any]:
    """One SFT record: the image, and the conversation whose first user turn shows it (TRL
    puts the image before that turn's text)."""
    turns = [turn("user", prompt)] if isinstance(prompt, str) else list(prompt)
    return {"images": [image], "messages": [*turns, turn("assistant", answer)]}


def dpo_example(
    image: Image.Image, prompt: str | Messages, chosen: str, rejected: str
) -> dict[str, Any]:
    """One DPO record in TRL's conversational format with the image both answers are about."""
    turns = [turn("user", prompt)] if isinstance(prompt, str) else list(prompt)
    return {
        "images": [image],
        "prompt": turns,
        "chosen": [turn("assistant", chosen)],
        "rejected": [turn("assistant", rejected)],
    }


def sft_config(settings: SftSettings, output_dir: Path, mixed_precision: str = "no") -> Any:
    """TRL's SFTConfig for a VLM: the text SFT's, without packing (TRL refuses it for images)."""
    from trl import SFTConfig

    return SFTConfig(
        **trainer_arguments(settings, output_dir, mixed_precision),
        include_num_input_tokens_seen="non_padding",
        # Truncating would cut <image> placeholders off their image's features; max_length
        # must hold the image tokens and the whole conversation (TRL names the problem).
        max_length=settings.max_length,
        assistant_only_loss=True,
        packing=False,
    )


def dpo_config(settings: PreferenceSettings, output_dir: Path, mixed_precision: str = "no") -> Any:
    from trl import DPOConfig

    return DPOConfig(
        **trainer_arguments(settings, output_dir, mixed_precision),
        beta=settings.beta,
        max_length=settings.max_length,
    )


def build_trainer(
    kind: str,
    config: Any,
    model_path: Path,
    examples: list[dict[str, Any]],
    callbacks: list,
    resume: Path | None = None,
) -> Any:
    """TRL's SFTTrainer (``kind`` "sft") or DPOTrainer ("dpo") on the VLM in ``model_path``,
    or on the weights of ``resume``, the checkpoint it goes on from.

    The weights of a resumed run are loaded here, by ``from_pretrained``: Trainer's own resume
    loads a checkpoint's state dict as is, and transformers 5 saves LLaVA under its original
    key names (``language_model.model.*``), which that load silently ignores, so a resumed run
    would go on from the starting weights with the checkpoint's optimizer state
    (transformers#43701). DPO's frozen reference is always the starting model.
    """
    import datasets
    import transformers

    from flywheel.train.vlm.model import load_vlm

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    model, processor = load_vlm(resume or model_path)
    extra = {"ref_model": load_vlm(model_path)[0]} if kind == "dpo" else {}
    trainer = _trainer_class(kind)(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(examples),
        processing_class=processor,
        callbacks=[ManifestOnSave(), *callbacks],
        **extra,
    )
    trainer.remove_callback(transformers.PrinterCallback)  # ReportLogs reports the logs
    return trainer


def _trainer_class(kind: str) -> type:
    import trl

    base = {"sft": trl.SFTTrainer, "dpo": trl.DPOTrainer}[kind]

    class VisionTrainer(base):  # type: ignore[misc, valid-type]
        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            # The weights are the checkpoint's already (build_trainer); the optimizer,
            # scheduler, RNG and data position are still restored by Trainer.
            return None

    return VisionTrainer


def _train(
    kind: str,
    settings: TrainSettings,
    model_path: Path,
    examples: list[dict[str, Any]],
    work: Path,
    staging: Path,
    reporter: Reporter,
) -> tuple[Any, ReportLogs, float]:
    """Train (resuming from ``work`` if possible) and save model and processor to ``staging``."""
    from accelerate import PartialState

    if not examples:
        raise ValueError(f"VLM {kind.upper()}: no examples to train on")
    precision = training_precision(settings, reporter)
    make = sft_config if kind == "sft" else dpo_config
    config = make(settings, work, precision)
    state = PartialState()  # set up by the config
    resume = resume_point(work, reporter, state.is_main_process)
    state.wait_for_everyone()
    callback = ReportLogs(reporter)
    # TRL's fused LM head on CPU too scores only the answer's positions, not the image's
    score_labelled_positions_only()
    trainer = build_trainer(kind, config, model_path, examples, [callback], resume)
    reporter.info(f"VLM {kind.upper()}: {len(examples)} examples, {settings.steps} steps")
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if state.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    state.wait_for_everyone()
    trainer.save_model(str(staging))  # the model and, as processing class, its processor
    state.wait_for_everyone()
    return trainer.state, callback, output.metrics["train_runtime"]


def train_vlm_sft(
    settings: SftSettings,
    model_path: Path,
    examples: list[dict[str, Any]],
    work: Path,
    staging: Path,
    reporter: Reporter,
) -> dict[str, Any]:
    """SFT of the VLM in ``model_path`` on ``sft_example`` records; the run's metrics."""
    state, callback, runtime = _train(
        "sft", settings, model_path, examples, work, staging, reporter
    )
    losses = [(h["step"], h["loss"]) for h in state.log_history if "loss" in h]
    return {
        "steps": state.global_step,
        "examples": len(examples),
        "first_loss": losses[0][1] if losses else None,
        "final_loss": losses[-1][1] if losses else None,
        "loss_curve": loss_curve(losses),
        "tokens": state.num_input_tokens_seen - callback.start_tokens,
        "train_seconds": round(runtime, 3),
        "resumed_from_step": callback.start_step,
    }


def train_vlm_dpo(
    settings: PreferenceSettings,
    model_path: Path,
    examples: list[dict[str, Any]],
    work: Path,
    staging: Path,
    reporter: Reporter,
) -> dict[str, Any]:
    """DPO of the VLM in ``model_path`` on ``dpo_example`` records; the run's metrics, with
    the first and last logged value of each of ``DPO_TRACKED``."""
    state, callback, runtime = _train(
        "dpo", settings, model_path, examples, work, staging, reporter
    )
    logs = state.log_history
    losses = [(h["step"], h["loss"]) for h in logs if "loss" in h]
    out: dict[str, Any] = {
        "preference": "dpo",
        "preference/steps": state.global_step,
        "preference/examples": len(examples),
        "preference/first_loss": losses[0][1] if losses else None,
        "preference/final_loss": losses[-1][1] if losses else None,
        "preference/loss_curve": loss_curve(losses),
        "preference/train_seconds": round(runtime, 3),
        "preference/resumed_from_step": callback.start_step,
    }
    for key in DPO_TRACKED:
        values = [h[key] for h in logs if key in h]
        if values:
            out[f"preference/first/{key}"] = values[0]
            out[f"preference/last/{key}"] = values[-1]
    return out

"""Supervised fine-tuning with TRL's SFTTrainer: the current pre-trained model -> sft_checkpoint.

    accelerate launch -m flywheel.train.sft --spec flywheel.yaml [--set sft.steps=50 ...]
    python -m flywheel.train.sft --spec flywheel.yaml            # one process, by hand

Starts from the published ``pretrained_checkpoint`` (its tokenizer is in the same directory;
``--input pretrained_checkpoint=VERSION``, default CURRENT, is how the Dagster asset pins the
version it resolved, see ``flywheel.core.products``) and trains on ``sft.data`` as ChatML
conversations with the loss on assistant tokens only (``assistant_only_loss``: the chat
template's ``{% generation %}`` span, i.e. the answer and its closing ``<|im_end|>``). The
result is published as a versioned, verified model directory (safetensors + tokenizer) under
``<data_dir>/sft_checkpoint``, with the parent's version as its ``inputs``, and recorded in
the catalog.

A run is keyed by a fingerprint of the settings that shape training, the parent checkpoint's
version and the data's content. Until it is published, its resumable checkpoints live in
``sft_checkpoint/work/<fingerprint>/checkpoint-N`` (Trainer's format, every ``save_every``
steps): a rerun after a crash resumes from the newest complete one, exactly where it stopped
(a corrupt one is logged, set aside as ``corrupt-checkpoint-N`` and skipped). A rerun of a
finished run whose version is still published trains nothing, makes that version current
again and reports it (``done.json``).

Keying, resuming, publishing and reuse are ``flywheel.train.finetune``'s, shared with each
flywheel cycle (``flywheel.loop.retrain``); this module is the SFT trainer (``train_and_save``,
which a cycle's retraining runs too) and the entry point.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from flywheel.core import artifacts
from flywheel.core import products as P
from flywheel.core.records import Loaded
from flywheel.core.report import Reporter, loss_curve
from flywheel.core.settings.lora import LoraSettings
from flywheel.core.settings.train import SftSettings
from flywheel.core.spec import Spec, add_spec_arguments, load_spec
from flywheel.train import lora
from flywheel.train.finetune import (
    FineTune,
    ReportLogs,
    prepare_tokenizer,
    resume_point,
    run_finetune,
    stop_on_turn_end,
    trainer_arguments,
    training_precision,
    use_optimizer,
)
from flywheel.train.fused_head import score_labelled_positions_only
from flywheel.train.model import load_model
from flywheel.train.optim import optimizer_metadata
from flywheel.train.sft_data import data_fingerprint, load_sft_data
from flywheel.train.sft_resume import ManifestOnSave

PRODUCT, PARENT = P.SFT, P.PRETRAINED


def sft_config(settings: SftSettings, output_dir: Path, mixed_precision: str = "no") -> Any:
    """TRL's SFTConfig for ``settings``; creating it sets up the (distributed) device state."""
    from trl import SFTConfig

    return SFTConfig(
        **trainer_arguments(settings, output_dir, mixed_precision),
        include_num_input_tokens_seen="non_padding",
        max_length=settings.max_length,
        assistant_only_loss=True,
        packing=False,  # packing would need padding-free attention (flash-attn) to be exact
        # balanced: transformers' BatchRebalanceSampler draws each optimizer step's examples at
        # random and splits them by length across the accumulated micro-batches; Trainer
        # normalises the loss over the whole step, so the split changes the padding only.
        train_sampling_strategy="batch_rebalance" if settings.batching == "balanced" else "random",
    )


def seed_balanced_batches(trainer: Any) -> None:
    """Make ``batching: balanced`` draw its steps with the run's data seed, as random batching
    does: transformers 5.24 builds its BatchRebalanceSampler with a fixed seed (42), so
    ``sft.seed`` would not change the data order."""
    build = trainer._get_train_sampler

    def sampler(dataset: Any = None) -> Any:
        made = build(dataset)
        made.seed = trainer.args.data_seed
        return made

    trainer._get_train_sampler = sampler


def train_metrics(state: Any, runtime: float, callback: ReportLogs) -> dict[str, Any]:
    """Loss summary (over every session of the run) and this session's throughput.

    Named as pre-training names them (``flywheel.train.pretrain``), so the UI plots both alike.
    """
    losses = [(h["step"], h["loss"]) for h in state.log_history if "loss" in h]
    tokens = state.num_input_tokens_seen - callback.start_tokens
    points = loss_curve(losses)
    table = "| step | loss |\n|---:|---:|\n" + "\n".join(f"| {s} | {v:.4f} |" for s, v in points)
    return {
        "steps": state.global_step,
        "first_loss": losses[0][1] if losses else None,
        "final_loss": losses[-1][1] if losses else None,
        "min_loss": min(v for _, v in losses) if losses else None,
        "loss_curve": points,
        "loss_table": {"raw_value": table, "type": "md"},
        "tokens": tokens,
        "tokens_per_s": tokens / max(runtime, 1e-9),
        "train_seconds": round(runtime, 3),
        "resumed_from_step": callback.start_step,  # 0: trained from the parent in one go
    }


def build_trainer(
    config: Any,
    parent_path: Path,
    attn_implementation: str,
    data: Loaded,
    callback: ReportLogs | None = None,
    lora_settings: LoraSettings | None = None,
    lora_key: str = "sft.lora",
) -> Any:
    """SFTTrainer on the parent model and tokenizer, with the chat template it needs; with
    ``lora_settings`` enabled it trains a LoRA adapter (``lora_key`` names them in errors)."""
    import datasets
    import transformers
    from trl import SFTTrainer

    from flywheel.train.tokenizer import load_tokenizer

    # Progress bars are noise in a log stream; ReportLogs reports progress instead.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    tokenizer = prepare_tokenizer(load_tokenizer(parent_path))
    model = load_model(parent_path, attn_implementation)
    stop_on_turn_end(model, tokenizer)
    score_labelled_positions_only()  # TRL's LM head, on CPU too
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(data.examples),
        processing_class=tokenizer,
        callbacks=[ManifestOnSave(), *([callback] if callback is not None else [])],
        **lora.peft_arguments(model, lora_settings, lora_key),
    )
    # With tqdm off, Trainer prints every log dict to stdout; ReportLogs already logs them.
    trainer.remove_callback(transformers.PrinterCallback)
    if config.train_sampling_strategy == "batch_rebalance":
        seed_balanced_batches(trainer)
    return trainer


def train_and_save(
    run: FineTune, reporter: Reporter, attn_implementation: str, staging: Path | None = None
) -> tuple[dict[str, Any], Path]:
    """Train (resuming if possible) on every rank; the metrics and the saved model's dir.

    The model is saved to ``staging`` (default ``run.staging``), the same path on every rank;
    a LoRA run saves its adapter to ``lora.adapter_dir(run.work, "sft")`` and the merged model
    to ``staging``.
    """
    from accelerate import PartialState

    precision = training_precision(run.settings, reporter)
    config = sft_config(run.settings, run.work, precision)
    state = PartialState()  # set up by the config: one rank per process under accelerate
    resume = resume_point(run.work, reporter, state.is_main_process)
    state.wait_for_everyone()
    callback = ReportLogs(reporter)
    adapted = run.settings.lora
    key = "sft.lora" if run.stage == "sft" else "cycles.train.lora"
    trainer = build_trainer(
        config, run.parent.path, attn_implementation, run.data, callback, adapted, key
    )
    use_optimizer(trainer, run.settings)
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    metrics = train_metrics(trainer.state, output.metrics["train_runtime"], callback)
    metrics |= {"precision": precision, "num_processes": state.num_processes}
    metrics |= optimizer_metadata(run.settings.optimizer, trainer.optimizer)
    staging = staging or run.staging
    if lora.enabled(adapted):
        adapter = lora.adapter_dir(run.work, "sft")
        parent = run.parent.path
        metrics |= lora.save_trained(
            trainer, adapted, parent, staging, adapter, attn_implementation
        )
        return metrics, staging
    if state.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    state.wait_for_everyone()
    trainer.save_model(str(staging))  # collective: it gathers sharded weights
    state.wait_for_everyone()
    return metrics, staging


def run_sft(
    spec: Spec, reporter: Reporter, inputs: Mapping[str, artifacts.Artifact]
) -> dict[str, Any]:
    """Fine-tune the handed pre-trained model (``inputs``, as ``flywheel.core.products.
    resolve_inputs`` reads them) on ``sft.data``, or resume, or reuse; publish it."""
    P.check_inputs(PRODUCT, spec, inputs)
    parent = inputs[PARENT]
    data = load_sft_data(spec.sft.data)
    lineage = {
        PARENT: parent.version,
        "sft_data": data.source,
        "data_fingerprint": data_fingerprint(data),
        **data.counts,
    }
    run = FineTune(
        spec.sft,
        parent,
        data,
        spec.product_dir(PRODUCT),
        "sft",
        lineage,
        {"sft_data": data.source},
        inputs=P.versions(inputs),
    )
    train = partial(train_and_save, run, reporter, spec.model.attn_implementation)
    return run_finetune(spec, reporter, run, train)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flywheel.train.sft", description=__doc__)
    add_spec_arguments(parser)
    P.add_input_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # accelerate launch sets RANK on every process; only rank 0 talks to Dagster Pipes.
    with Reporter(is_main=os.environ.get("RANK", "0") == "0") as reporter:
        spec = load_spec(args.spec, args.overrides)
        run_sft(spec, reporter, P.resolve_inputs(spec, PRODUCT, P.parse_pins(args.input)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

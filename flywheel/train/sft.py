"""Supervised fine-tuning with TRL's SFTTrainer: the current pre-trained model -> sft_checkpoint.

    accelerate launch -m flywheel.train.sft --spec flywheel.yaml [--set sft.steps=50 ...]
    python -m flywheel.train.sft --spec flywheel.yaml            # one process, by hand

Starts from the published ``pretrained_checkpoint`` (its tokenizer is in the same directory)
and trains on ``sft.data`` as ChatML conversations with the loss on assistant tokens only
(``assistant_only_loss``: the chat template's ``{% generation %}`` span, i.e. the answer and
its closing ``<|im_end|>``). The result is published as a versioned, verified model directory
(safetensors + tokenizer) under ``<data_dir>/sft_checkpoint`` and recorded in the catalog.

A run is keyed by a fingerprint of the settings that shape training, the parent checkpoint's
version and the data's content. Until it is published, its resumable checkpoints live in
``sft_checkpoint/work/<fingerprint>/checkpoint-N`` (Trainer's format, every ``save_every``
steps): a rerun after a crash resumes from the newest complete one, exactly where it stopped
(a corrupt one is logged, set aside as ``corrupt-checkpoint-N`` and skipped). A rerun of a
finished run whose version is still published trains nothing, makes that version current
again and reports it (``done.json``).

``FineTune`` and ``run_finetune`` do all this for any fine-tuning run (settings, parent, data,
product root, catalog stage, lineage): ``flywheel.loop.retrain`` runs each cycle with them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from flywheel.core import artifacts
from flywheel.core.catalog import Catalog
from flywheel.core.records import Loaded
from flywheel.core.report import Reporter, loss_curve
from flywheel.core.settings.train import SftSettings, TrainSettings
from flywheel.core.shards import atomic_write_bytes
from flywheel.core.spec import Spec, add_spec_arguments, load_spec
from flywheel.train.model import load_model
from flywheel.train.sft_data import data_fingerprint, load_sft_data
from flywheel.train.sft_resume import ManifestOnSave, resumable_checkpoint, set_aside
from flywheel.train.state import run_lock
from flywheel.train.trainer import resolve_precision

PRODUCT = "sft_checkpoint"
PARENT = "pretrained_checkpoint"
# Settings that change only bookkeeping, not the trained weights: editing them must not
# start a new run (and lose the resumable checkpoints of the current one).
BOOKKEEPING = {"save_every", "keep_checkpoints", "log_every", "num_workers", "accelerate_config"}
# Files that Trainer.save_model writes beside the model but a published checkpoint must not
# hold: training_args.bin is a pickle, and published weights are safetensors only.
NOT_PUBLISHED = ("training_args.bin",)
# In a run's work dir: the model of an earlier stage of the same run (SFT before preference
# training), kept until the run is published so that a crash in a later stage keeps it.
INTERMEDIATE = "sft-model"


def run_fingerprint(
    settings: SftSettings, parent_version: str, data: Loaded, extra: dict[str, Any] | None = None
) -> str:
    """What decides the trained weights: same fingerprint, same run (and same work dir).

    ``extra`` holds further inputs that shape the weights (a later stage's settings and data).
    """
    shaping = settings.model_dump(mode="json", exclude=BOOKKEEPING | {"data"})
    key = {"settings": shaping, "parent": parent_version, "data": data_fingerprint(data)}
    if extra:  # absent, not empty: SFT's fingerprints (and work dirs) stay what they were
        key["extra"] = extra
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FineTune:
    """One fine-tuning run: ``settings`` on ``data`` from ``parent``, published under ``root``.

    ``stage`` names it in the manifest and the catalog; ``lineage`` is what it was made from
    (manifest and catalog); ``metadata`` is added to its materialization; ``keyed_by`` holds
    inputs beyond settings, parent and data that shape its weights (see ``run_fingerprint``).
    """

    settings: SftSettings
    parent: artifacts.Artifact
    data: Loaded
    root: Path
    stage: str
    lineage: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    keyed_by: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def fingerprint(self) -> str:
        return run_fingerprint(self.settings, self.parent.version, self.data, self.keyed_by)

    @property
    def work(self) -> Path:
        return self.root / "work" / self.fingerprint

    @property
    def staging(self) -> Path:
        """Where the final model is saved before publishing: one path for every rank."""
        return self.root / f".staging-{self.fingerprint}"


def trainer_arguments(
    settings: TrainSettings, output_dir: Path, mixed_precision: str = "no"
) -> dict[str, Any]:
    """The TrainingArguments fields every TRL trainer here shares, from ``settings``.

    ``mixed_precision`` is accelerate's "no", "bf16" or "fp16" (see ``resolve_precision``).
    """
    return dict(
        output_dir=str(output_dir),
        max_steps=settings.steps,
        per_device_train_batch_size=settings.micro_batch,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": settings.min_lr_ratio},
        warmup_steps=settings.warmup_steps,
        optim="adamw_torch",
        weight_decay=settings.weight_decay,
        adam_beta1=settings.beta1,
        adam_beta2=settings.beta2,
        adam_epsilon=settings.eps,
        max_grad_norm=settings.max_grad_norm,
        seed=settings.seed,
        data_seed=settings.seed,
        # transformers 5's name for gradient checkpointing; TRL's own default is on.
        activation_checkpointing=settings.gradient_checkpointing,
        # TRL defaults bf16 to on; fp32 must be asked for explicitly.
        bf16=mixed_precision == "bf16",
        fp16=mixed_precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        torch_compile=settings.compile,
        dataloader_num_workers=settings.num_workers,
        logging_steps=settings.log_every,
        logging_first_step=True,  # the first loss is the baseline the summary compares to
        save_strategy="steps",
        save_steps=settings.save_every,
        save_total_limit=settings.keep_checkpoints,
        report_to=[],
        disable_tqdm=True,  # progress goes through the reporter's log lines
    )


def sft_config(settings: SftSettings, output_dir: Path, mixed_precision: str = "no") -> Any:
    """TRL's SFTConfig for ``settings``; creating it sets up the (distributed) device state."""
    from trl import SFTConfig

    return SFTConfig(
        **trainer_arguments(settings, output_dir, mixed_precision),
        include_num_input_tokens_seen="non_padding",
        max_length=settings.max_length,
        assistant_only_loss=True,
        packing=False,  # packing would need padding-free attention (flash-attn) to be exact
    )


def training_precision(settings: TrainSettings, reporter: Reporter) -> str:
    """Accelerate's mixed precision for ``settings.precision`` here, warning if it changed."""
    cuda = torch.cuda.is_available()
    precision, note = resolve_precision(
        settings.precision, cuda, cuda and torch.cuda.is_bf16_supported()
    )
    if note:
        reporter.warning(note)
    return precision


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer the ChatML template with generation markers, checking its tokens."""
    from trl.chat_template_utils import has_generation_markers

    from flywheel.train.tokenizer import CHAT_TEMPLATE, IM_END, IM_START

    vocab = tokenizer.get_vocab()
    missing = [t for t in (IM_START, IM_END) if t not in vocab]
    if missing:
        raise ValueError(
            f"the pre-trained tokenizer lacks the chat tokens {missing}; train it with "
            "flywheel.train.tokenizer (it adds them) or use one that has them"
        )
    if not tokenizer.chat_template or not has_generation_markers(tokenizer.chat_template):
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def stop_on_turn_end(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make generation stop at ``<|im_end|>`` as well as EOS: the end of an assistant turn."""
    from flywheel.train.tokenizer import stop_token_ids

    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id


class ReportLogs(TrainerCallback):
    """Streams Trainer's log lines to the reporter and remembers where this session began."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter
        self.start_step = 0
        self.start_tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Called after a resumed state is loaded: this session trains from here.
        self.start_step = state.global_step
        self.start_tokens = state.num_input_tokens_seen

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if logs and state.is_world_process_zero:
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in logs.items())
            self.reporter.info(f"step {state.global_step}/{state.max_steps}: {shown}")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


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


def _quarantine(reporter: Reporter, data: Loaded, work: Path) -> None:
    """Keep every refused record, with its reason, beside the run; warn with the counts."""
    if not data.quarantine:
        return
    work.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(q) + "\n" for q in data.quarantine)
    atomic_write_bytes(work / "quarantine.jsonl", lines.encode())
    reasons = {k: v for k, v in data.counts.items() if k.startswith("quarantined/")}
    reporter.warning(
        f"sft data {data.source}: {len(data.quarantine)} record(s) quarantined {reasons}; "
        f"see {work / 'quarantine.jsonl'}"
    )


def resume_point(work: Path, reporter: Reporter, is_main: bool) -> Path | None:
    resume, bad = resumable_checkpoint(work)
    for path, problem in bad:
        reporter.warning(f"cannot resume from {path}: {problem}; using the previous checkpoint")
        if is_main:
            reporter.warning(f"set aside {path} as {set_aside(path)}")
    if resume is not None:
        reporter.info(f"resuming from {resume}")
    return resume


def build_trainer(
    config: Any,
    parent_path: Path,
    attn_implementation: str,
    data: Loaded,
    callback: ReportLogs | None = None,
) -> Any:
    """SFTTrainer on the parent model and tokenizer, with the chat template it needs."""
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
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(data.examples),
        processing_class=tokenizer,
        callbacks=[ManifestOnSave(), *([callback] if callback is not None else [])],
    )
    # With tqdm off, Trainer prints every log dict to stdout; ReportLogs already logs them.
    trainer.remove_callback(transformers.PrinterCallback)
    return trainer


def publish_run(
    spec: Spec, run: FineTune, staging: Path, metrics: dict[str, Any]
) -> dict[str, Any]:
    """Publish the trained model, record it in the catalog, and mark the run done."""
    for name in NOT_PUBLISHED:
        (staging / name).unlink(missing_ok=True)
    # The manifest and catalog keep plain values; the markdown table is for the UI only.
    scalars = {k: v for k, v in metrics.items() if k != "loss_table"}
    artifact = artifacts.publish(
        run.root,
        staging,
        stage=run.stage,
        fingerprint=run.fingerprint,
        spec=spec.resolved(),
        lineage=run.lineage,
        metrics=scalars,
    )
    record = (artifact.version, run.stage, artifact.path, run.parent.version, run.lineage)
    Catalog(spec.catalog).record_checkpoint(*record, scalars, spec.fingerprint())
    metadata = {
        **metrics,
        "checkpoint": str(artifact.path),
        "parent_checkpoint": run.parent.version,
        **run.metadata,
        "examples": len(run.data.examples),
        "quarantined": len(run.data.quarantine),
    }
    artifacts.mark_done(run.work, {"version": artifact.version, "metadata": metadata})
    # The published version is the run's result; its resumable checkpoints (weights and
    # optimizer state, ~3x the model each) would otherwise pile up, one set per finished run.
    for path in [*run.work.rglob("checkpoint-*"), run.work / INTERMEDIATE]:
        shutil.rmtree(path, ignore_errors=True)
    return {"version": artifact.version, "metadata": metadata}


def train_and_save(
    run: FineTune, reporter: Reporter, attn_implementation: str, staging: Path | None = None
) -> tuple[dict[str, Any], Path]:
    """Train (resuming if possible) on every rank; the metrics and the saved model's dir.

    The model is saved to ``staging`` (default ``run.staging``), the same path on every rank.
    """
    from accelerate import PartialState

    precision = training_precision(run.settings, reporter)
    config = sft_config(run.settings, run.work, precision)
    state = PartialState()  # set up by the config: one rank per process under accelerate
    resume = resume_point(run.work, reporter, state.is_main_process)
    state.wait_for_everyone()
    callback = ReportLogs(reporter)
    trainer = build_trainer(config, run.parent.path, attn_implementation, run.data, callback)
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    metrics = train_metrics(trainer.state, output.metrics["train_runtime"], callback)
    metrics |= {"precision": precision, "num_processes": state.num_processes}
    staging = staging or run.staging
    if state.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    state.wait_for_everyone()
    trainer.save_model(str(staging))  # collective: it gathers sharded weights
    state.wait_for_everyone()
    return metrics, staging


Train = Callable[[], tuple[dict[str, Any], Path]]


def run_finetune(
    spec: Spec, reporter: Reporter, run: FineTune, train: Train | None = None
) -> dict[str, Any]:
    """Train ``run`` (or resume it, or reuse it if finished) and publish it; rank 0 returns
    the record ``{"version", "metadata"}``, the other ranks ``{}``.

    ``train`` runs on every rank and returns the metrics and the saved model's directory;
    by default it is SFT (``train_and_save``).
    """
    label = f"{run.stage} run {run.fingerprint}"
    done = artifacts.finished_run(run.root, run.work, deep=False, warn=reporter.warning)
    if done is not None:
        if reporter.is_main:  # the same inputs again: their model becomes current again
            artifacts.make_current(run.root, done["version"])
        reporter.info(f"{label} already published as {done['version']}")
        reporter.materialization(done["metadata"], data_version=done["version"])
        return done
    reporter.info(
        f"{label}: {len(run.data.examples)} conversations from {run.data.source}, "
        f"parent {run.parent.version}, {run.settings.steps} steps"
    )
    train = train or partial(train_and_save, run, reporter, spec.model.attn_implementation)
    if not reporter.is_main:
        train()
        return {}
    with run_lock(run.work):  # a second run of the same inputs waits for nothing: it fails fast
        _quarantine(reporter, run.data, run.work)
        metrics, staging = train()
        result = publish_run(spec, run, staging, metrics)
    reporter.materialization(result["metadata"], data_version=result["version"])
    return result


def run_sft(spec: Spec, reporter: Reporter) -> dict[str, Any]:
    """Fine-tune the pre-trained model on ``sft.data`` (or resume, or reuse) and publish it."""
    parent = artifacts.read_current(spec.product_dir(PARENT))
    data = load_sft_data(spec.sft.data)
    lineage = {
        PARENT: parent.version,
        "sft_data": data.source,
        "data_fingerprint": data_fingerprint(data),
        **data.counts,
    }
    run = FineTune(
        spec.sft, parent, data, spec.product_dir(PRODUCT), "sft", lineage, {"sft_data": data.source}
    )
    return run_finetune(spec, reporter, run)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flywheel.train.sft", description=__doc__)
    add_spec_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # accelerate launch sets RANK on every process; only rank 0 talks to Dagster Pipes.
    with Reporter(is_main=os.environ.get("RANK", "0") == "0") as reporter:
        run_sft(load_spec(args.spec, args.overrides), reporter)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What every fine-tuning run shares: its key, its TRL arguments, logging, resume and publish.

    python -c "from flywheel.core.spec import load_spec; from flywheel.train.finetune import \
trainer_arguments; print(trainer_arguments(load_spec('flywheel.yaml').sft, 'out'))"

A run (``FineTune``: settings, parent checkpoint, data, product root, catalog stage, lineage)
is keyed by a fingerprint of the settings that shape training, the parent's version and the
data's content (``run_fingerprint``). Until it is published, its resumable checkpoints live in
``<root>/work/<fingerprint>/checkpoint-N`` (``resume_point`` picks the newest complete one and
sets corrupt ones aside); ``run_finetune`` trains it under a lock, publishes the model as a
versioned, verified directory (``publish_run``), records it in the catalog and marks the run
done, so a rerun of a finished run trains nothing and makes its version current again.

The trainer itself is the caller's: ``flywheel.train.sft`` (SFT, cycle 0) and
``flywheel.loop.retrain`` (each cycle: SFT, then ``flywheel.loop.preference``) pass it in, and
build their TRL configs from ``trainer_arguments`` with the chat template of
``prepare_tokenizer``, logging through ``ReportLogs``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from flywheel.core import artifacts, keys
from flywheel.core.artifacts import atomic_write_bytes
from flywheel.core.catalog import Catalog
from flywheel.core.records import Loaded
from flywheel.core.report import Reporter
from flywheel.core.settings.train import SftSettings, TrainSettings
from flywheel.core.spec import Spec
from flywheel.train import lora
from flywheel.train.optim import TrainerOptimizer, train_optimizer_args
from flywheel.train.sft_data import data_fingerprint
from flywheel.train.sft_resume import resumable_checkpoint, set_aside
from flywheel.train.state import run_lock
from flywheel.train.trainer import resolve_precision

# Settings that change only bookkeeping, not the trained weights: editing them must not
# start a new run (and lose the resumable checkpoints of the current one).
BOOKKEEPING = {
    "save_every", "keep_checkpoints", "log_every", "num_workers", "accelerate_config",
    "launcher", "max_restarts",
}  # fmt: skip
# Files that Trainer.save_model writes beside the model but a published checkpoint must not
# hold: training_args.bin is a pickle, and published weights are safetensors only.
NOT_PUBLISHED = ("training_args.bin",)
# In a run's work dir: the model of an earlier stage of the same run (SFT before preference
# training), kept until the run is published so that a crash in a later stage keeps it.
INTERMEDIATE = "sft-model"


def shaping(settings: TrainSettings, exclude: set[str] | None = None) -> dict[str, Any]:
    """The settings that shape the trained weights, as keyed: without ``BOOKKEEPING`` and
    ``exclude``, and without a ``lora`` block that is off or ``batching`` at its default
    (random), so that the keys (and work dirs) of runs from before those settings existed stay
    what they were."""
    off = set() if lora.enabled(getattr(settings, "lora", None)) else {"lora"}
    if getattr(settings, "batching", "random") == "random":
        off.add("batching")
    return settings.model_dump(mode="json", exclude=BOOKKEEPING | (exclude or set()) | off)


def run_fingerprint(
    settings: SftSettings, parent_version: str, data: Loaded, extra: dict[str, Any] | None = None
) -> str:
    """What decides the trained weights: same fingerprint, same run (and same work dir).

    ``extra`` holds further inputs that shape the weights (a later stage's settings and data).
    """
    key = {
        "settings": shaping(settings, {"data"}),
        "parent": parent_version,
        "data": data_fingerprint(data),
    }
    if extra:  # absent, not empty: SFT's fingerprints (and work dirs) stay what they were
        key["extra"] = extra
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FineTune:
    """One fine-tuning run: ``settings`` on ``data`` from ``parent``, published under ``root``.

    ``stage`` names it in the manifest and the catalog; ``lineage`` is what it was made from
    (manifest and catalog); ``metadata`` is added to its materialization; ``keyed_by`` holds
    inputs beyond settings, parent and data that shape its weights (see ``run_fingerprint``);
    ``inputs`` the ``{product: version}`` it read, the manifest's ``inputs``.
    """

    settings: SftSettings
    parent: artifacts.Artifact
    data: Loaded
    root: Path
    stage: str
    lineage: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    keyed_by: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)

    @cached_property
    def fingerprint(self) -> str:
        return run_fingerprint(self.settings, self.parent.version, self.data, self.keyed_by)

    @cached_property
    def build_key(self) -> dict[str, str]:
        """The run's ``flywheel.core.keys`` build key: the same parts as its fingerprint,
        one by one, so that a new version can say which of them changed."""
        train = {"train": shaping(self.settings, {"data"})}
        data = {"training data": f"sha256:{data_fingerprint(self.data)}"}
        extra = {f"keyed_by:{k}": keys.fingerprint(v) for k, v in self.keyed_by.items()}
        parent = {"parent": self.parent.version}
        return keys.make_key({**self.inputs, **parent}, train, data) | extra

    @property
    def work(self) -> Path:
        return self.root / "work" / self.fingerprint

    @property
    def adapter_root(self) -> Path:
        """Where the run's LoRA adapters are published, beside its checkpoints
        (``sft_checkpoint_adapter``, ``cycles/<N>/checkpoint_adapter``)."""
        return self.root.with_name(f"{self.root.name}_adapter")

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


def use_optimizer(trainer: Any, settings: TrainSettings) -> None:
    """Make ``trainer`` (any TRL/transformers Trainer) build ``settings.optimizer`` with
    ``flywheel.train.optim``, as pre-training does, when ``train()`` creates its optimizer.

    SFTTrainer takes this as its ``optimizer_cls_and_kwargs`` argument, the DPO, GRPO and RLOO
    trainers do not; Trainer reads the attribute that argument sets only in
    ``create_optimizer``, so setting it before ``train()`` serves every trainer alike. The
    optimizer is then still Trainer's own: its state is saved in each checkpoint and loaded on
    resume as AdamW's was. AdamW stays unfused, as ``optim="adamw_torch"`` built it before.
    """
    if trainer.optimizer is not None:
        raise ValueError("the trainer already has an optimizer; use_optimizer must come first")
    trainer.optimizer_cls_and_kwargs = (
        TrainerOptimizer,
        {"args": train_optimizer_args(settings, fused=False)},
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


def publish_run(
    spec: Spec, run: FineTune, staging: Path, metrics: dict[str, Any]
) -> dict[str, Any]:
    """Publish the trained model, record it in the catalog, and mark the run done."""
    for name in NOT_PUBLISHED:
        (staging / name).unlink(missing_ok=True)
    # The manifest and catalog keep plain values; the markdown table is for the UI only.
    scalars = {k: v for k, v in metrics.items() if k != "loss_table"}
    adapter = lora.publish_adapters(spec, run, scalars)
    lineage = run.lineage | ({"adapter": adapter.version} if adapter else {})
    built = keys.key_meta(run.root, run.build_key)
    artifact = artifacts.publish(
        run.root,
        staging,
        inputs=run.inputs,
        stage=run.stage,
        fingerprint=run.fingerprint,
        spec=spec.resolved(),
        lineage=lineage,
        metrics=scalars,
        **built,
    )
    record = (artifact.version, run.stage, artifact.path, run.parent.version, lineage)
    Catalog.open(spec.catalog).record_checkpoint(*record, scalars, spec.fingerprint())
    if adapter is not None:
        metrics = {**metrics, "adapter": adapter.version, "adapter_path": str(adapter.path)}
    metadata = {
        **metrics,
        "checkpoint": str(artifact.path),
        "parent_checkpoint": run.parent.version,
        **run.metadata,
        "examples": len(run.data.examples),
        "quarantined": len(run.data.quarantine),
        "build_changes": "; ".join(built[keys.CHANGES]),
    }
    artifacts.mark_done(run.work, {"version": artifact.version, "metadata": metadata})
    # The published version is the run's result; its resumable checkpoints (weights and
    # optimizer state, ~3x the model each) would otherwise pile up, one set per finished run.
    for path in [
        *run.work.rglob("checkpoint-*"),
        run.work / INTERMEDIATE,
        run.work / lora.ADAPTERS,
    ]:
        shutil.rmtree(path, ignore_errors=True)
    return {"version": artifact.version, "metadata": metadata}


# Trains a run on every rank: its metrics and the directory its model was saved to.
Train = Callable[[], tuple[dict[str, Any], Path]]


def run_finetune(spec: Spec, reporter: Reporter, run: FineTune, train: Train) -> dict[str, Any]:
    """Train ``run`` with ``train`` (or resume it, or reuse it if finished) and publish it;
    rank 0 returns the record ``{"version", "metadata"}``, the other ranks ``{}``.

    ``train`` runs on every rank and returns the metrics and the saved model's directory
    (SFT: ``flywheel.train.sft.train_and_save``).
    """
    label = f"{run.stage} run {run.fingerprint}"
    done = artifacts.finished_run(run.root, run.work, deep=False, warn=reporter.warning)
    if done is not None:
        if reporter.is_main:  # the same inputs again: their model becomes current again
            artifacts.make_current(run.root, done["version"])
            if "adapter" in done["metadata"]:  # and so does its adapter
                artifacts.make_current(run.adapter_root, done["metadata"]["adapter"])
        reporter.info(f"{label} already published as {done['version']}: reused, not trained")
        done["metadata"] = {**done["metadata"], "reused": True}
        reporter.materialization(done["metadata"], data_version=done["version"])
        return done
    reporter.info(
        f"{label}: {len(run.data.examples)} conversations from {run.data.source}, "
        f"parent {run.parent.version}, {run.settings.steps} steps"
    )
    if not reporter.is_main:
        train()
        return {}
    with run_lock(run.work):  # a second run of the same inputs waits for nothing: it fails fast
        _quarantine(reporter, run.data, run.work)
        metrics, staging = train()
        result = publish_run(spec, run, staging, metrics)
    result["metadata"]["reused"] = False
    reporter.materialization(result["metadata"], data_version=result["version"])
    return result

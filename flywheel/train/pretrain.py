"""Pre-train a causal LM on the packed ``tokenized_dataset``, resumably, and publish it.

    accelerate launch -m flywheel.train.pretrain --spec SPEC [--set pretrain.steps=50 ...]
    python -m flywheel.train.pretrain --spec SPEC            # one process, same result
    flywheel train pretrain --spec SPEC                      # writes the spec, then the above

It reads the products ``flywheel.core.products`` declares for ``pretrained_checkpoint``: the
``tokenized_dataset`` (``--input tokenized_dataset=VERSION``, default CURRENT; the Dagster
asset passes the versions it resolved) and the tokenizer that dataset was packed with, and
records both versions as the published checkpoint's ``inputs``.

One run = one *work directory*, ``<data_dir>/pretrained_checkpoint/work/<fingerprint>``,
where the fingerprint hashes what decides the trained weights: ``pretrain`` (less logging,
checkpoint cadence and loader workers), ``model``, and the versions of the tokenized dataset
and tokenizer. A run resumes from the newest good step checkpoint there (``flywheel.train.
state``) and continues the same loss trajectory; at the end it publishes the model with its
tokenizer as a new version of ``pretrained_checkpoint`` (``flywheel.core.artifacts``),
writes ``done.json``, records lineage in the catalog and reports one materialization (rank
0, through Dagster Pipes when launched by Dagster). Re-running a finished fingerprint
re-reports its published version instead of training again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flywheel.core import artifacts
from flywheel.core import products as P
from flywheel.core.catalog import Catalog
from flywheel.core.report import Reporter, loss_curve
from flywheel.core.shards import ShardSet
from flywheel.core.spec import Spec, add_spec_arguments, load_spec
from flywheel.train import state
from flywheel.train.optim import build_optimizer, optimizer_metadata, train_optimizer_args
from flywheel.train.trainer import (
    Position,
    has_fused_adamw,
    make_scheduler,
    resolve_precision,
    train,
)

PRODUCT, DATASET, TOKENIZER = P.PRETRAINED, P.TOKENIZED, P.TOKENIZER
# Settings that change how a run is watched, stored or launched, never the weights it
# produces: the same run launched by Ray Train resumes what `accelerate launch` began.
NOT_IN_FINGERPRINT = {
    "log_every", "save_every", "keep_checkpoints", "num_workers", "launcher", "max_restarts"
}  # fmt: skip


@dataclass(frozen=True)
class Inputs:
    dataset: ShardSet
    tokenizer: artifacts.Artifact

    @classmethod
    def handed(cls, spec: Spec, inputs: Mapping[str, Any]) -> Inputs:
        """The declared inputs (``flywheel.core.products``), checked to belong together."""
        P.check_inputs(PRODUCT, spec, inputs)
        dataset, tokenizer = inputs[DATASET], inputs[TOKENIZER]
        packed_with = dataset.inputs.get(TOKENIZER)
        if packed_with not in (None, tokenizer.version):
            raise P.InputError(
                f"{DATASET} {dataset.version} was packed with {TOKENIZER} {packed_with}, not "
                f"with the {tokenizer.version} handed: its token ids would not match"
            )
        return cls(dataset, tokenizer)

    @property
    def versions(self) -> dict[str, str]:
        return {DATASET: self.dataset.version, TOKENIZER: self.tokenizer.version}

    @property
    def lineage(self) -> dict[str, str | None]:
        return {
            **self.versions,
            P.DEDUPLICATED: self.dataset.manifest.get("input_version"),
        }


def read_inputs(spec: Spec, pinned: Mapping[str, str] | None = None) -> Inputs:
    """The tokenized dataset (``pinned`` or CURRENT) and the tokenizer it was packed with."""
    return Inputs.handed(spec, P.resolve_inputs(spec, PRODUCT, pinned))


def work_fingerprint(spec: Spec, inputs: Inputs) -> str:
    blob = {
        "pretrain": spec.pretrain.model_dump(mode="json", exclude=NOT_IN_FINGERPRINT),
        "model": spec.model.model_dump(mode="json"),
        DATASET: inputs.dataset.version,
        TOKENIZER: inputs.tokenizer.version,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def make_accelerator(spec: Spec) -> tuple[Any, str, str | None]:
    """The Accelerator, the mixed precision it uses, and a warning if the spec's was changed."""
    from accelerate import Accelerator

    s = spec.pretrain
    cuda = torch.cuda.is_available()
    precision, note = resolve_precision(s.precision, cuda, cuda and torch.cuda.is_bf16_supported())
    accelerator = Accelerator(
        # cpu=True on a CPU machine: `accelerate launch --multi_gpu` then gives real gloo
        # ranks (MULTI_CPU); without it every process believes it is alone.
        cpu=not cuda,
        mixed_precision=precision,
        gradient_accumulation_steps=s.grad_accum,
        dynamo_backend="inductor" if s.compile else "no",  # the spec decides, not the env
    )
    return accelerator, precision, note


# -- a finished fingerprint ------------------------------------------------------------
def _reusable(spec: Spec, work: Path, reporter: Reporter) -> dict[str, Any] | None:
    """done.json's record if its version is still published and verifies (made current)."""
    root = spec.product_dir(PRODUCT)
    record = artifacts.finished_run(root, work, warn=reporter.warning)
    if record is None:
        return None
    if artifacts.make_current(root, record["version"]):
        reporter.info(f"made {record['version']} the current {PRODUCT} again")
    record["metadata"]["checkpoint"] = str(root / record["version"])
    record["metadata"]["reused"] = True  # the same fingerprint, whoever launched it
    return record


# -- training --------------------------------------------------------------------------
def _special_ids(tokenizer_dir: Path) -> dict[str, int]:
    from flywheel.train.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    ids = {"eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id}
    ids["pad_token_id"] = tok.pad_token_id
    return {k: v for k, v in ids.items() if v is not None}


def _build(spec: Spec, inputs: Inputs, resume: Path | None, device: torch.device) -> Any:
    """The model: the resumed step's weights, or a fresh (seeded) one from the spec."""
    from flywheel.train.model import build_model, load_model

    manifest = inputs.dataset.manifest
    if resume is not None:
        model = load_model(resume, spec.model.attn_implementation)
    else:
        special = _special_ids(inputs.tokenizer.path)
        seq_len, vocab = manifest["seq_len"], manifest["vocab_size"]
        model = build_model(spec.model, vocab, seq_len, special, spec.pretrain.seed)
    if model.get_input_embeddings().num_embeddings < manifest["vocab_size"]:
        raise ValueError(
            f"the model has {model.get_input_embeddings().num_embeddings} token embeddings, "
            f"fewer than the tokenizer's vocabulary of {manifest['vocab_size']}"
        )
    if spec.pretrain.gradient_checkpointing:
        # use_cache is turned off per forward call (loop.train_step) rather than in the
        # config, so the published config still generates with a KV cache.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device)


def _batches(spec: Spec, inputs: Inputs, accelerator: Any, start_batch: int) -> tuple[Any, Any]:
    """This rank's stream of micro-batches from ``start_batch`` on, and the stream itself."""
    from torch.utils.data import DataLoader

    from flywheel.train.loader import PackedStream, train_files

    s = spec.pretrain
    # Not prepared by Accelerate: the stream already gives each rank its own rows, and
    # start_batch puts it exactly where the checkpoint left off.
    stream = PackedStream(
        train_files(inputs.dataset),
        s.micro_batch,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        seed=s.seed,
        start_batch=start_batch,
    )
    cuda = accelerator.device.type == "cuda"
    loader = DataLoader(stream, batch_size=None, num_workers=s.num_workers, pin_memory=cuda)
    return iter(loader), stream


def _train(
    spec: Spec, accelerator: Any, reporter: Reporter, inputs: Inputs, work: Path
) -> tuple[Position, int, Any, dict[str, Any]]:
    """Resume or start, train to ``pretrain.steps``; returns (position, resumed step, model,
    the optimizer's metadata)."""
    from accelerate.utils import set_seed

    s = spec.pretrain
    resume = state.on_main(accelerator, lambda: state.find_resumable(work, reporter.warning))
    set_seed(s.seed)
    model = _build(spec, inputs, resume, accelerator.device)
    args = train_optimizer_args(s, fused=has_fused_adamw(accelerator.device))
    optimizer = build_optimizer(model, args)
    scheduler = make_scheduler(optimizer, s.warmup_steps, s.steps, s.min_lr_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    pos = state.load_position(resume) if resume is not None else Position()
    batches, stream = _batches(spec, inputs, accelerator, pos.batches)
    if resume is not None:  # after the loader started: it draws from the RNG being restored
        state.restore(accelerator, resume, optimizer, scheduler)
        reporter.info(f"resuming from {resume.name}: step {pos.step}, batch {pos.batches}")
    else:
        reporter.info(f"training from scratch in {work}")
    debug = _debug_enabled()

    def log(p: Position, m: dict[str, float]) -> None:
        reporter.info(
            f"step {m['step']}/{s.steps} loss {m['loss']:.4f} lr {m['lr']:.3e} "
            f"grad_norm {m['grad_norm']:.3f} tokens/s {m['tokens_per_s']:,.0f}"
        )

    def save(p: Position) -> None:
        keep = s.keep_checkpoints
        path = state.save(accelerator, work, model, optimizer, scheduler, p, keep, debug)
        reporter.info(f"saved {path.name}")

    tokens_per_step = s.micro_batch * s.grad_accum * accelerator.num_processes * stream.seq_len
    reporter.info(f"data: {stream.describe()}; {tokens_per_step} tokens per step")
    started = pos.step
    train(
        accelerator, model, optimizer, scheduler, batches, pos,
        steps=s.steps, grad_accum=s.grad_accum, max_grad_norm=s.max_grad_norm,
        tokens_per_step=tokens_per_step, log_every=s.log_every, save_every=s.save_every,
        on_log=log, on_save=save,
    )  # fmt: skip
    model = accelerator.unwrap_model(model, keep_torch_compile=False)
    return pos, started, model, optimizer_metadata(s.optimizer, optimizer)


def _debug_enabled() -> bool:
    return os.environ.get(state.DEBUG_ENV, "") not in ("", "0")


# -- publishing ------------------------------------------------------------------------
def _metadata(
    accelerator: Any, precision: str, pos: Position, resumed: int, model: Any
) -> dict[str, Any]:
    from flywheel.train.model import count_parameters

    curve = loss_curve(list(enumerate(pos.losses, start=1)))
    table = "| step | loss |\n|---:|---:|\n" + "\n".join(f"| {s} | {v:.4f} |" for s, v in curve)
    return {
        "steps": pos.step,
        "final_loss": pos.losses[-1],
        "first_loss": pos.losses[0],
        "min_loss": min(pos.losses),
        "loss_curve": curve,
        "loss_table": {"raw_value": table, "type": "md"},
        "tokens": pos.tokens,
        "tokens_per_s": pos.tokens / max(pos.train_seconds, 1e-9),
        "train_seconds": round(pos.train_seconds, 3),
        "resumed_from_step": resumed,  # 0: trained from scratch in this run
        "num_processes": accelerator.num_processes,
        "precision": precision,
        "parameters": count_parameters(model),
    }


def _publish(spec: Spec, inputs: Inputs, work: Path, metrics: dict[str, Any]) -> Any:
    """The last step checkpoint's weights + the tokenizer, as a new published version."""
    root = spec.product_dir(PRODUCT)
    final = state.step_dir(work, spec.pretrain.steps)
    staging = artifacts.staging_dir(root)
    for f in final.iterdir():
        if f.is_file() and f.name != artifacts.MANIFEST:
            shutil.copy2(f, staging / f.name)
    for f in inputs.tokenizer.path.iterdir():
        if f.is_file() and f.name != artifacts.MANIFEST and not (staging / f.name).exists():
            shutil.copy2(f, staging / f.name)
    parent = str(spec.model.path) if spec.model.path is not None else None
    lineage = {**inputs.lineage, "parent": parent}
    return artifacts.publish(
        root,
        staging,
        inputs=inputs.versions,
        stage="pretrain",
        spec=spec.resolved(),
        lineage=lineage,
        metrics=metrics,
    )


def _finish(spec: Spec, inputs: Inputs, work: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Rank 0: publish, then write done.json; returns the done record."""
    scalars = {k: v for k, v in metadata.items() if isinstance(v, int | float | str)}
    artifact = _publish(spec, inputs, work, scalars)
    record = {
        "version": artifact.version,
        "lineage": inputs.lineage,
        "metrics": scalars,
        "metadata": {**metadata, "checkpoint": str(artifact.path), **inputs.lineage},
    }
    artifacts.mark_done(work, record)
    return {**record, "metadata": {**record["metadata"], "reused": False}}


def _record_lineage(spec: Spec, record: dict[str, Any]) -> None:
    """The catalog row of the published version (replaced, so re-reporting is idempotent)."""
    parent = str(spec.model.path) if spec.model.path is not None else None
    Catalog.open(spec.catalog).record_checkpoint(
        record["version"], "pretrain", Path(record["metadata"]["checkpoint"]), parent,
        record["lineage"], record["metrics"], spec.fingerprint(),
    )  # fmt: skip


def pretrain(spec: Spec, handed: Mapping[str, Any]) -> dict[str, Any]:
    """Train (or resume, or reuse) the spec's pre-training run on the ``handed`` inputs
    (``flywheel.core.products.resolve_inputs``); returns rank 0's report."""
    from transformers.utils import logging as hf_logging

    inputs = Inputs.handed(spec, handed)  # before any process group: a bad set fails fast
    hf_logging.disable_progress_bar()  # save_pretrained's bars would flood the training log
    accelerator, precision, note = make_accelerator(spec)
    state.check_supported(accelerator)
    main = accelerator.is_main_process
    with Reporter(main) as reporter:
        if note:
            reporter.warning(note)
        work = spec.product_dir(PRODUCT) / "work" / work_fingerprint(spec, inputs)
        record = state.on_main(accelerator, lambda: _reusable(spec, work, reporter))
        if record is None:
            with state.run_lock(work) if main else nullcontext():
                pos, resumed, model, optim = _train(spec, accelerator, reporter, inputs, work)
                metadata = _metadata(accelerator, precision, pos, resumed, model) | optim
                record = _finish(spec, inputs, work, metadata) if main else None
        else:
            reporter.info(f"{work.name} already trained: reusing {record['version']}")
        if main:
            _record_lineage(spec, record)
            reporter.materialization(record["metadata"], data_version=record["version"])
        accelerator.wait_for_everyone()
    accelerator.end_training()
    return record["metadata"] if main else {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_spec_arguments(parser)
    P.add_input_arguments(parser)
    args = parser.parse_args(argv)
    spec = load_spec(args.spec, args.overrides)
    pretrain(spec, P.resolve_inputs(spec, PRODUCT, P.parse_pins(args.input)))


if __name__ == "__main__":
    main()

"""LoRA fine-tuning (peft) for every stage that trains a model: its peft config, the check of
its target modules, the adapter's numbers, and the merged model a stage publishes.

    python -c "from flywheel.train.lora import merge_adapter as m; m('BASE', 'ADAPTER', 'OUT')"
    python -m pytest -q tests/train/test_lora.py

A stage with ``lora.enabled`` (``flywheel.core.settings.lora``) trains only the adapter
matrices: TRL's trainers get ``peft_config`` (SFT, DPO, GRPO, RLOO), PPO wraps its policy
with ``wrap``. When training ends the stage saves the adapter (``adapter_config.json`` +
``adapter_model.safetensors``) into ``adapter_dir(work, stage)`` and the merged model
(``merge_and_unload``: W + (alpha/r)·B·A, safetensors, Hugging Face format) where the stage's
model goes, so eval, promotion and generation load a plain model unchanged.
``flywheel.train.finetune.publish_run`` then publishes a run's adapters as an artifact of their
own, with lineage to the checkpoint they adapt and the data they were trained on.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any, Protocol

import torch

from flywheel.core import artifacts
from flywheel.core.artifacts import atomic_write_json
from flywheel.core.catalog import Catalog
from flywheel.core.settings.lora import LoraSettings
from flywheel.core.spec import Spec

ADAPTERS = "adapters"  # in a run's work dir: one adapter directory per LoRA stage
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTS = "adapts.json"  # beside a stage's adapter: the model directory it was trained on


def enabled(settings: LoraSettings | None) -> bool:
    return settings is not None and settings.enabled


def adapter_dir(work: Path, stage: str) -> Path:
    """Where stage ``stage`` of the run in ``work`` saves its adapter."""
    return Path(work) / ADAPTERS / stage


def peft_config(settings: LoraSettings | None) -> Any:
    """peft's LoraConfig for ``settings``, or None when LoRA is off."""
    if not enabled(settings):
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def check_targets(model: torch.nn.Module, settings: LoraSettings, key: str = "lora") -> None:
    """A clear error naming ``key`` when a target module is not in ``model`` (peft's own
    error comes later and does not say which spec key to change)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    unknown = [t for t in settings.target_modules if t not in names]
    if unknown:
        linear = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear)
            }
        )
        kind = getattr(getattr(model, "config", None), "model_type", "this")
        raise ValueError(
            f"{key}.target_modules: {unknown} name no module of the {kind} model; "
            f"its linear layers are {linear}"
        )


def peft_arguments(model: torch.nn.Module, settings: LoraSettings | None, key: str) -> dict:
    """``peft_config=`` for a TRL trainer on ``model`` ({} when LoRA is off), targets checked."""
    if not enabled(settings):
        return {}
    check_targets(model, settings, key)
    return {"peft_config": peft_config(settings)}


def wrap(model: torch.nn.Module, settings: LoraSettings, key: str = "lora") -> Any:
    """``model`` as a peft model whose only trainable weights are the adapter's."""
    from peft import get_peft_model

    check_targets(model, settings, key)
    return get_peft_model(model, peft_config(settings))


def adapter_metrics(model: Any, adapter: Path, settings: LoraSettings) -> dict[str, Any]:
    """Trainable and total parameters of the peft ``model`` and the saved adapter's bytes."""
    trainable, total = model.get_nb_trainable_parameters()
    return {
        "lora/trainable_params": int(trainable),
        "lora/total_params": int(total),
        "lora/trainable_share": trainable / max(total, 1),
        "lora/adapter_bytes": (Path(adapter) / ADAPTER_FILES[1]).stat().st_size,
        "lora/r": settings.r,
    }


def keep_adapter_files(adapter: Path, adapts: Path) -> None:
    """Leave only the adapter's own files (Trainer also writes a tokenizer, a model card and
    its arguments' pickle) plus a note of the model directory it adapts."""
    adapter = Path(adapter)
    missing = [f for f in ADAPTER_FILES if not (adapter / f).exists()]
    if missing:
        raise FileNotFoundError(f"the saved adapter {adapter} lacks {missing}")
    for path in adapter.iterdir():
        if path.name not in ADAPTER_FILES:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    atomic_write_json(adapter / ADAPTS, {"base": str(adapts)})


def merge_adapter(
    base: Path | str,
    adapter: Path | str,
    out: Path | str,
    tokenizer: Any = None,
    generation_config: Any = None,
    attn_implementation: str = "sdpa",
) -> None:
    """The base model in ``base`` with the adapter in ``adapter`` merged into its weights,
    saved to ``out`` (safetensors) with ``tokenizer`` (default: the base's)."""
    from peft import PeftModel

    from flywheel.train.model import load_model
    from flywheel.train.tokenizer import load_tokenizer

    # fp32 (load_model's dtype): the merge adds (alpha/r)·B·A to W without rounding it twice.
    model = PeftModel.from_pretrained(load_model(Path(base), attn_implementation), str(adapter))
    merged = model.merge_and_unload()
    if generation_config is not None:
        merged.generation_config = copy.deepcopy(generation_config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    (tokenizer if tokenizer is not None else load_tokenizer(Path(base))).save_pretrained(out)


def save_trained(
    trainer: Any,
    settings: LoraSettings,
    base: Path,
    staging: Path,
    adapter: Path,
    attn_implementation: str = "sdpa",
    tokenizer: Any = None,
) -> dict[str, Any]:
    """After a TRL trainer's LoRA run, on every rank: the adapter to ``adapter``, the merged
    model (on ``base``, the model it started from) to ``staging``; the adapter's numbers."""
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        for path in (staging, adapter):
            shutil.rmtree(path, ignore_errors=True)
    state.wait_for_everyone()
    trainer.save_model(str(adapter))  # collective: it gathers sharded adapter weights
    state.wait_for_everyone()
    metrics: dict[str, Any] = {}
    if state.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model)
        keep_adapter_files(adapter, base)
        metrics = adapter_metrics(model, adapter, settings)
        merge_adapter(
            base,
            adapter,
            staging,
            tokenizer if tokenizer is not None else trainer.processing_class,
            model.generation_config,
            attn_implementation,
        )
    state.wait_for_everyone()
    return metrics


def policy_and_reference(
    parent: Path, saved: Path | None, settings: LoraSettings | None, key: str = "lora"
) -> tuple[Any, Any]:
    """For a training loop of our own (PPO): the policy to train, from ``parent`` or from its
    ``saved`` state (a resumed run), and its frozen reference, the parent. With LoRA on, the
    policy is the parent plus a fresh (or the saved) adapter and the reference is None: the
    policy with its adapter disabled is the parent, without a second copy in memory."""
    from peft import PeftModel

    from flywheel.train.model import load_model

    if not enabled(settings):
        reference = load_model(Path(parent)).eval().requires_grad_(False)
        return load_model(Path(saved) if saved else Path(parent)), reference
    model = load_model(Path(parent))
    if saved is None:
        return wrap(model, settings, key), None
    return PeftModel.from_pretrained(model, str(saved), is_trainable=True), None


def save_and_merge(model: Any, settings: LoraSettings, base: Path, adapter: Path) -> tuple:
    """Save the adapter of the trained peft ``model`` (one process) to ``adapter``, then merge
    it in place; the merged plain model and the adapter's numbers."""
    shutil.rmtree(adapter, ignore_errors=True)
    model.save_pretrained(str(adapter))
    keep_adapter_files(adapter, base)
    metrics = adapter_metrics(model, adapter, settings)
    return model.merge_and_unload(), metrics


class AdaptedRun(Protocol):
    """What publishing a run's adapters reads of it (``flywheel.train.finetune.FineTune``)."""

    stage: str
    work: Path
    adapter_root: Path
    parent: Any  # artifacts.Artifact: .path, .version
    lineage: dict[str, Any]
    inputs: dict[str, str]
    fingerprint: str


def publish_adapters(
    spec: Spec, run: AdaptedRun, metrics: dict[str, Any]
) -> artifacts.Artifact | None:
    """Publish the adapters the run's LoRA stages saved (``lora.adapter_dir``), one directory
    per stage in training order, under ``run.adapter_root``, and record them in the catalog as
    a child of the checkpoint they adapt; None when no stage trained one."""
    saved = run.work / ADAPTERS
    stages = sorted(
        (d for d in saved.glob("*") if (d / ADAPTER_FILES[1]).exists()),
        key=lambda d: (d / ADAPTER_FILES[1]).stat().st_mtime_ns,
    )
    if not stages:
        return None
    staging = artifacts.staging_dir(run.adapter_root)
    order = []
    for stage in stages:
        shutil.copytree(stage, staging / stage.name)
        base = json.loads((stage / ADAPTS).read_text())["base"]
        # The first stage adapts the parent; a later one, the merge of the stages before it.
        adapts = run.parent.version if base == str(run.parent.path) else "the stages before"
        order.append({"stage": stage.name, "adapts": adapts})
    lineage = {**run.lineage, "base_checkpoint": run.parent.version, "adapter_stages": order}
    numbers = {k: v for k, v in metrics.items() if k.startswith("lora/") or "/lora/" in k}
    stage = f"{run.stage}_adapter"
    artifact = artifacts.publish(
        run.adapter_root,
        staging,
        inputs=run.inputs,
        stage=stage,
        fingerprint=run.fingerprint,
        spec=spec.resolved(),
        lineage=lineage,
        metrics=numbers,
    )
    record = (artifact.version, stage, artifact.path, run.parent.version, lineage, numbers)
    Catalog.open(spec.catalog).record_checkpoint(*record, spec.fingerprint())
    return artifact

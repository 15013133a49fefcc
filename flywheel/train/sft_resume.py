"""Resumable SFT checkpoints: Trainer's ``checkpoint-N`` directories, verified like ours.

Trainer saves weights, optimizer, scheduler and RNG states but nothing that says the save
finished or that the files are intact. ``ManifestOnSave`` adds the same manifest the rest of
flywheel uses (``flywheel.core.artifacts``: sizes and sha256, written last), and
``resumable_checkpoint`` picks the newest directory that verifies, naming what is wrong with
the newer ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from flywheel.core import artifacts


class ManifestOnSave(TrainerCallback):
    """After every Trainer save: wait for all ranks' files, then rank 0 writes the manifest."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # each rank writes its own rng_state_<rank>.pth
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and path.is_dir():
            artifacts.write_manifest(path, step=state.global_step)


def checkpoint_problem(path: Path) -> str | None:
    """Why a ``checkpoint-N`` directory cannot be resumed from, or None if it can.

    ``ManifestOnSave`` writes the manifest after Trainer's last file, so a directory without
    one was interrupted while saving; with one, every file's size and sha256 are checked.
    The structural checks below then name the usual failures in Trainer's own terms.
    """
    from safetensors import safe_open

    if not (path / artifacts.MANIFEST).exists():
        return f"no {artifacts.MANIFEST}: the save was interrupted"
    try:
        artifacts.verify(path)
    except artifacts.ArtifactError as exc:
        return str(exc).removeprefix(f"artifact {path} is ")
    state = path / "trainer_state.json"
    if not state.exists():
        return "no trainer_state.json: the save was interrupted"
    try:
        json.loads(state.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"trainer_state.json is corrupt ({exc})"
    # A LoRA run's checkpoint holds its adapter's weights, not the model's.
    lora = (path / "adapter_config.json").exists()
    weights = path / ("adapter_model.safetensors" if lora else "model.safetensors")
    if not weights.exists():
        return f"{weights.name} is missing"
    try:
        with safe_open(str(weights), framework="pt") as f:
            list(f.keys())  # reads and checks the header against the file's size
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        return f"{weights.name} is corrupt ({exc})"
    if not (path / "optimizer.pt").exists():
        return "optimizer.pt is missing"
    return None


def _step(path: Path) -> int:
    suffix = path.name.removeprefix("checkpoint-")
    return int(suffix) if suffix.isdigit() else -1


def resumable_checkpoint(work: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete ``checkpoint-N`` under ``work``, and the newer bad ones skipped."""
    candidates = sorted((p for p in work.glob("checkpoint-*") if _step(p) >= 0), key=_step)
    bad: list[tuple[Path, str]] = []
    for path in reversed(candidates):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, bad
        bad.append((path, problem))
    return None, bad


def set_aside(path: Path) -> Path:
    """Rename a bad checkpoint out of Trainer's ``checkpoint-*`` namespace, keeping it."""
    target = path.with_name(f"corrupt-{path.name}")
    shutil.rmtree(target, ignore_errors=True)  # one set aside earlier at the same step
    path.rename(target)
    return target

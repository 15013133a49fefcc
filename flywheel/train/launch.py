"""Launch a training or evaluation stage out of process, the same way with or without Dagster.

    flywheel train pretrain --spec flywheel.yaml      # accelerate launch -m flywheel.train.pretrain
    flywheel train sft --spec flywheel.yaml
    flywheel train eval --spec flywheel.yaml          # one process, no accelerate

A flywheel cycle's retraining takes its cycle as an extra argument and its inputs pinned:
``command("retrain", spec, spec_file, ["--cycle", "3", "--input", "promoted_model/2=v-..."])``.
Pre-training, SFT and evaluation take the versions of their inputs (``pinned_inputs``:
``--input tokenized_dataset=v-...``, resolved as ``flywheel.core.products`` declares them), so
a run reads what was current when it was launched, not what became current while it waited.
A cycle's stages are pinned by their caller (``flywheel.loop.cycles.cycle_inputs``).

The stage reads a *resolved* spec file (absolute paths, defaults filled in), written next to
its outputs, so the exact inputs of every run are on disk. ``num_processes > 1`` adds
``--multi_gpu``: on CUDA that is one rank per GPU (NCCL); on CPU the entry points build their
``Accelerator(cpu=True)``, which gives real gloo ranks (``accelerate launch --cpu`` would
silently start one process). An ``accelerate_config`` file (FSDP, DeepSpeed, multi-node)
replaces these flags; see ``configs/accelerate/``. ``launcher: ray`` runs the same entry as
``num_processes`` Ray Train workers on the spec's Ray cluster instead, restarted from the last
checkpoint when one is lost (``python -m flywheel.train.ray_launch STAGE --spec ...``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from flywheel.core import products as P
from flywheel.core.settings.train import TrainSettings
from flywheel.core.spec import Spec

STAGES = {
    "pretrain": "flywheel.train.pretrain",
    "sft": "flywheel.train.sft",
    "retrain": "flywheel.loop.retrain",
    "eval": "flywheel.loop.eval",
    "generate": "flywheel.loop.generate",
    "play": "flywheel.loop.agents.play",
}
# With a ``vision`` section these stages train, answer with and score a VLM instead
# (flywheel.loop.vision); eval branches inside flywheel.loop.eval, as agents do.
VISION_STAGES = {
    "sft": "flywheel.loop.vision.seed",
    "retrain": "flywheel.loop.vision.retrain",
    "generate": "flywheel.loop.vision.generate",
}
PRODUCTS = {
    "pretrain": P.PRETRAINED,
    "sft": P.SFT,
    "retrain": P.CYCLE_CHECKPOINT,
    "eval": P.EVAL,
    "generate": P.GENERATIONS,
    "play": P.TRAJECTORIES,
}
ONE_PROCESS = ("eval", "generate", "play")  # plain python: no accelerate, no ranks
TRAINED = ("pretrain", "sft", "retrain")  # ranks started by accelerate or Ray Train
TAKES_INPUTS = ("pretrain", "sft", "eval")  # entries that accept --input PRODUCT=VERSION


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_run_spec(spec: Spec, stage: str) -> Path:
    """Write the resolved spec for one stage run; the file name is its content hash."""
    resolved = spec.resolved()
    blob = json.dumps(resolved, sort_keys=True).encode()
    path = (
        spec.product_dir(PRODUCTS[stage])
        / "specs"
        / f"{hashlib.sha256(blob).hexdigest()[:16]}.yaml"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
        tmp.replace(path)
    return path


def train_settings(stage: str, spec: Spec) -> TrainSettings:
    """The settings a training stage launches with (its processes, its accelerate config)."""
    if stage == "retrain":  # sft's settings with the cycle's overrides
        return spec.cycles.train_settings(spec.sft)
    return {"pretrain": spec.pretrain, "sft": spec.sft}[stage]


def command(stage: str, spec: Spec, spec_file: Path, extra_args: Sequence[str] = ()) -> list[str]:
    """The argv that runs ``stage`` on ``spec_file``: ``accelerate launch`` for training.

    ``extra_args`` go to the stage's entry point after ``--spec`` (e.g. retrain's
    ``--cycle N``).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    module = STAGES[stage]
    if spec.vision is not None:
        module = VISION_STAGES.get(stage, module)
    entry = ["-m", module, "--spec", str(spec_file), *map(str, extra_args)]
    if stage in ONE_PROCESS:
        return [sys.executable, *entry]
    train = train_settings(stage, spec)
    if train.launcher == "ray":  # Ray Train workers on the cluster (flywheel.train.ray_launch)
        return [sys.executable, "-m", "flywheel.train.ray_launch", stage, *entry[2:]]
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if train.accelerate_config is not None:
        cmd += ["--config_file", str(train.accelerate_config)]
        cmd += ["--num_processes", str(train.num_processes)]
    else:
        cmd += ["--num_machines", "1", "--num_processes", str(train.num_processes)]
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        if "OMP_NUM_THREADS" not in os.environ:  # a user's own setting is accelerate's to read
            threads = str(threads_per_process(train.num_processes))
            cmd += ["--num_cpu_threads_per_process", threads]
        if train.num_processes > 1:
            cmd += ["--multi_gpu", "--main_process_port", str(_free_port())]
    return [*cmd, *entry]


def threads_per_process(num_processes: int) -> int:
    """The CPU threads each rank gets: the cores this process may use, shared out.

    accelerate launch sets OMP_NUM_THREADS=1 for every rank unless given
    ``--num_cpu_threads_per_process`` (or ``--cpu``, which starts one process only), so a
    single CPU run trained on one of the machine's cores: on 2 cores the agent example's
    cycle fine-tune left the other core idle and took 3 min 23 s for 400 steps.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, num_processes))


def pinned_inputs(stage: str, spec: Spec) -> list[str]:
    """``--input PRODUCT=VERSION`` for each input of ``stage``, the versions it would read if
    launched now; none for a stage outside ``TAKES_INPUTS`` (it resolves its own)."""
    if stage not in TAKES_INPUTS:
        return []
    # Sizes only: the entry re-hashes what it reads; hashing a checkpoint twice is waste.
    handed = P.resolve_inputs(spec, PRODUCTS[stage], deep=False)
    return P.input_arguments(P.versions(handed))


def run_stage(stage: str, spec: Spec, extra_args: Sequence[str] = ()) -> int:
    """Run a stage by hand (no Dagster): write its spec, launch it, return its exit code."""
    spec_file = write_run_spec(spec, stage)
    argv = command(stage, spec, spec_file, [*pinned_inputs(stage, spec), *extra_args])
    print("$ " + " ".join(argv), file=sys.stderr, flush=True)
    return subprocess.call(argv)

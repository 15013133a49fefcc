"""Resumable training checkpoints: everything a killed run needs to continue bit for bit.

Written every ``save_every`` steps by ``python -m flywheel.train.pretrain --spec FILE``:

    <work>/step-0000050/
        config.json, generation_config.json, model.safetensors   weights (rank 0)
        training_state/optimizer.pt, scheduler.pt[, scaler.pt]   rank 0: DDP replicates them
        training_state/accelerate/        FSDP instead of optimizer.pt: Accelerate's save_state
        training_state/rng-<rank>.pt      every rank's python, numpy, torch and CUDA generators
        training_state/data.json          the Position: steps, batches consumed, tokens, losses
        training_state/debug-<rank>.json  with FLYWHEEL_TRAIN_DEBUG=1: the sha256 of this
                                          rank's live parameters and its own (unaveraged) losses
        manifest.json                     written last (flywheel.core.artifacts): complete

Every rank writes into one staging directory; after a barrier rank 0 writes the manifest and
renames it into place, so a checkpoint is visible only once all ranks' files are in it. On
start the newest checkpoint that verifies is used; a newer corrupt one is named in the log
(the ``ArtifactError`` message names the file) and moved aside to ``corrupt-step-*``.

The data position is ``Position.batches`` (this rank's micro-batches consumed): the loader
(``flywheel.train.loader.PackedStream``) computes its order from (files, seed, epoch), so resuming
is ``start_batch=batches``, not a replay.

Under FSDP (``configs/accelerate/fsdp.yaml``, FSDP2) parameters and optimizer state are
sharded, so one rank's ``optimizer.state_dict()`` is only its part. There every rank calls
``accelerator.save_state`` into ``training_state/accelerate``: with ``fsdp_state_dict_type:
SHARDED_STATE_DICT`` each rank writes its shards of model and optimizer (torch distributed
checkpoint); with ``FULL_STATE_DICT`` rank 0 writes them gathered. ``accelerator.load_state``
reads either back after ``prepare``. The scheduler is ours (not prepared by Accelerate), so it
is saved as scheduler.pt as in DDP, and so are the data position and our RNG files. The
weights beside it are the full model, gathered by ``accelerator.get_state_dict`` (a collective)
and written by rank 0 with ``save_pretrained``: a step checkpoint is always a loadable Hugging
Face model. ``check_supported`` refuses what cannot be resumed this way (see there).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flywheel.core import artifacts
from flywheel.core.artifacts import atomic_write_json
from flywheel.train.trainer import Position

STATE = "training_state"
ACCELERATE = "accelerate"  # under STATE: accelerator.save_state's files (FSDP only)
DEBUG_ENV = "FLYWHEEL_TRAIN_DEBUG"


def step_dir(work: Path, step: int) -> Path:
    return Path(work) / f"step-{step:07d}"


def is_sharded(accelerator: Any) -> bool:
    """Whether parameters and optimizer state are sharded over ranks (FSDP)."""
    return accelerator.distributed_type == "FSDP"  # DistributedType is a str enum


def check_supported(accelerator: Any) -> None:
    """Refuse the distributed setups whose training state this module cannot save and resume.

    One process, DDP and FSDP2 are supported. ``accelerate launch`` announces FSDP and DeepSpeed
    to the process through ``ACCELERATE_USE_FSDP`` / ``ACCELERATE_USE_DEEPSPEED``; Accelerate
    honours them only on GPUs (and other accelerators), so on a CPU machine such a config would
    silently train plain DDP: that is refused too, rather than run something else than asked.
    """
    kind = accelerator.distributed_type
    if kind == "DEEPSPEED" or _env_flag("ACCELERATE_USE_DEEPSPEED"):
        raise NotImplementedError(
            "pre-training does not run under DeepSpeed: its engine owns the optimizer and "
            "checkpoint format, which this entry's resumable checkpoints do not drive. Use FSDP "
            "(configs/accelerate/fsdp.yaml shards parameters, gradients and optimizer state as "
            "ZeRO-3 does), or DeepSpeed through sft (sft.accelerate_config), whose Trainer "
            "supports it"
        )
    if kind == "MEGATRON_LM":
        raise NotImplementedError("pre-training does not run under Megatron-LM; use FSDP or DDP")
    if kind == "FSDP" and accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise NotImplementedError(
            "pre-training supports FSDP2 only (fsdp_version: 2, configs/accelerate/fsdp.yaml): "
            "its optimizer is built before prepare(), and Accelerate moves an optimizer onto the "
            "sharded parameters for FSDP2 but not for FSDP1"
        )
    if _env_flag("ACCELERATE_USE_FSDP") and kind != "FSDP":
        raise NotImplementedError(
            f"the accelerate config asks for FSDP, but Accelerate runs {kind.value} here: it "
            "enables FSDP only on GPUs and other accelerators, not on CPU (gloo) ranks. On CPU "
            "use no accelerate_config (pretrain.num_processes gives gloo DDP ranks)"
        )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true")


def on_main(accelerator: Any, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and give every rank its (picklable) result."""
    from accelerate.utils import broadcast_object_list

    value = [fn() if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(value, from_process=0)
    return value[0]


@contextmanager
def run_lock(work: Path) -> Iterator[None]:
    """Exclusive use of a work directory (rank 0 holds it); released even on ``kill -9``."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another run is training in {work}; wait for it") from None
        yield


# -- RNG -------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    # numpy's key array is stored as a tensor so the file loads with weights_only=True
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        # this rank's own device only: get_rng_state_all would open a context on every GPU
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def params_sha256(model: torch.nn.Module) -> str:
    """A hash of this process's parameter values (equal on every rank iff they agree)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# -- save ------------------------------------------------------------------------------
def save(
    accelerator: Any,
    work: Path,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    pos: Position,
    keep: int,
    debug: bool = False,
) -> Path:
    """Write the step checkpoint of ``pos`` on every rank; rank 0 finalizes and prunes."""
    final = step_dir(work, pos.step)
    staging = Path(work) / f".staging-{final.name}"
    rank, main = accelerator.process_index, accelerator.is_main_process
    if main:
        shutil.rmtree(staging, ignore_errors=True)  # a killed writer's leftovers
        (staging / STATE).mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), staging / STATE / f"rng-{rank}.pt")
    sharded = is_sharded(accelerator)
    full = None
    if sharded:  # collectives: every rank calls both
        accelerator.save_state(str(staging / STATE / ACCELERATE))  # model + optimizer (+ scaler)
        full = accelerator.get_state_dict(model)  # gathered on rank 0, {} elsewhere
    # without DDP and torch.compile wrappers: their state_dict keys would not load into HF
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    if debug:
        # under FSDP a rank holds only shards, so there is no per-rank hash of the model to compare
        digest = None if sharded else params_sha256(unwrapped)
        atomic_write_json(
            staging / STATE / f"debug-{rank}.json",
            {"rank": rank, "params_sha256": digest, "losses": pos.local_losses},
        )
    if main:
        unwrapped.save_pretrained(staging, state_dict=full)  # None: the model's own state_dict
        if not sharded:
            torch.save(optimizer.state_dict(), staging / STATE / "optimizer.pt")
            if accelerator.scaler is not None:
                torch.save(accelerator.scaler.state_dict(), staging / STATE / "scaler.pt")
        torch.save(scheduler.state_dict(), staging / STATE / "scheduler.pt")
        data = {**pos.to_json(), "world_size": accelerator.num_processes}
        atomic_write_json(staging / STATE / "data.json", data)
    accelerator.wait_for_everyone()  # every rank's files are in staging
    if main:
        artifacts.finalize(staging, final, step=pos.step)
        _prune(work, keep)
    accelerator.wait_for_everyone()
    return final


def _prune(work: Path, keep: int) -> None:
    steps = sorted(Path(work).glob("step-*"))
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# -- restore ---------------------------------------------------------------------------
def find_resumable(work: Path, warn: Callable[[str], None]) -> Path | None:
    """The newest step checkpoint that verifies; corrupt newer ones are reported and moved
    aside, so that a later save of the same step cannot be pruned in favour of them."""
    work = Path(work)
    for stale in work.glob(".staging-*"):  # the run lock is held: no writer is alive
        shutil.rmtree(stale, ignore_errors=True)
    for path in sorted(work.glob("step-*"), reverse=True):
        try:
            artifacts.verify(path)
        except artifacts.ArtifactError as exc:
            aside = work / f"corrupt-{path.name}"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(path, aside)
            warn(f"{exc}; not resuming from it (moved to {aside.name})")
            continue
        return path
    return None


def load_position(path: Path) -> Position:
    """The saved Position: read it first, to start the data stream at its batch."""
    return Position.from_json(json.loads((Path(path) / STATE / "data.json").read_text()))


def restore(accelerator: Any, path: Path, optimizer: Any, scheduler: Any) -> None:
    """Load optimizer, scheduler, loss scaler and this rank's RNG generators.

    Under FSDP also the model's shards (``accelerator.load_state``: the model and optimizer
    must have been prepared). Call it after the data iterator exists: a DataLoader draws a seed
    from the torch RNG when it starts, which an uninterrupted run did before this step as well.
    """
    state = Path(path) / STATE
    data = json.loads((state / "data.json").read_text())
    if data["world_size"] != accelerator.num_processes:
        raise artifacts.ArtifactError(
            f"{path} was written by {data['world_size']} processes, this run has "
            f"{accelerator.num_processes}: the data position cannot carry over"
        )
    if is_sharded(accelerator):
        # also restores Accelerate's own RNG files; ours, set below, are the same moment's
        accelerator.load_state(str(state / ACCELERATE))
    else:
        optimizer.load_state_dict(_load(state / "optimizer.pt"))  # onto the params' device
        if accelerator.scaler is not None and (state / "scaler.pt").exists():
            accelerator.scaler.load_state_dict(_load(state / "scaler.pt"))
    scheduler.load_state_dict(_load(state / "scheduler.pt"))
    set_rng_state(_load(state / f"rng-{accelerator.process_index}.pt"))


def _load(path: Path) -> Any:
    # to CPU first: rank 0 saved from cuda:0, and every rank loading there would crowd it
    return torch.load(path, map_location="cpu", weights_only=True)

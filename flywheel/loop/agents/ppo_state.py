"""The PPO stage's resumable state and its final output (``flywheel.loop.agents.ppo_train``).

    python -m pytest -q tests/loop/agents/test_ppo_train.py -k resume

``save`` writes ``<work>/step-NNNNNNN/``: the policy, the value model, both optimizers, every
rank's RNG state and the metrics so far, staged and renamed so a state is visible only once
complete; ``restore`` reads one back and refuses a state written with other settings or
another number of processes (the resumed run would not repeat the interrupted one);
``write_out`` publishes the final policy with its tokenizer and ``ppo.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from flywheel.core.artifacts import atomic_write_json
from flywheel.core.settings.rl import PpoSettings
from flywheel.train import state

POLICY, VALUE = "policy", "value"


def save(
    acc: Any,
    work: Path,
    it: int,
    policy: Any,
    critic: Any,
    opts: list[Any],
    history: list[dict[str, float]],
    settings: PpoSettings,
) -> None:
    """The resumable state after ``it`` iterations, visible only once complete."""
    from flywheel.core import artifacts

    final = state.step_dir(work, it)
    staging = work / f".staging-{final.name}"
    if acc.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    acc.wait_for_everyone()
    torch.save(state.rng_state(), staging / f"rng-{acc.process_index}.pt")
    if acc.is_main_process:
        acc.unwrap_model(policy).save_pretrained(staging / POLICY)
        acc.unwrap_model(critic).save_pretrained(staging / VALUE)
        for name, opt in zip((POLICY, VALUE), opts, strict=True):
            torch.save(opt.state_dict(), staging / f"{name}_optimizer.pt")
        record = {"iteration": it, "world_size": acc.num_processes, "history": history}
        record["settings"] = settings.model_dump()
        atomic_write_json(staging / "ppo_state.json", record)
    acc.wait_for_everyone()
    if acc.is_main_process:
        artifacts.finalize(staging, final, step=it)
        for old in sorted(work.glob("step-*"))[: -settings.keep_states]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


# what a rerun may change and still continue the same run
RESUMABLE_CHANGES = {"iterations", "save_every", "keep_states"}


def restore(
    acc: Any, path: Path, opts: list[Any], settings: PpoSettings
) -> tuple[int, list[dict[str, float]]]:
    """Optimizers and this rank's RNG from a saved state; its iteration and metrics so far.
    (The weights were loaded from it before ``prepare``.)"""
    record = json.loads((path / "ppo_state.json").read_text())
    now, then = settings.model_dump(), record["settings"]
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and now[k] != then.get(k))
    if changed:
        was = ", ".join(f"{k}: {then.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ValueError(
            f"{path} was trained with other settings ({was}); resuming would not continue that "
            "run: restore them, or use another work directory"
        )
    if record["world_size"] != acc.num_processes:
        raise ValueError(
            f"{path} was written by {record['world_size']} processes, this run has "
            f"{acc.num_processes}: each rank's rollouts would differ from the interrupted run's"
        )
    for name, opt in zip((POLICY, VALUE), opts, strict=True):
        opt.load_state_dict(torch.load(path / f"{name}_optimizer.pt", weights_only=True))
    state.set_rng_state(torch.load(path / f"rng-{acc.process_index}.pt", weights_only=True))
    return int(record["iteration"]), list(record["history"])


def write_out(
    model: Any, tokenizer: Any, out: Path, s: PpoSettings, parent: Path, result: dict[str, Any]
) -> None:
    """The final policy as a Hugging Face checkpoint, replacing ``out`` in one rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".staging-{out.name}"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    record = {"stage": "ppo", "parent": str(parent), "settings": s.model_dump(), "metrics": result}
    atomic_write_json(staging / "ppo.json", record)
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)

"""Pre-training: resumable state, and the entry end to end (publish, reuse, resume, kill -9).

The end-to-end tests share one finished 60-step run (``trained``) and work on copies of its
directory. Attention dropout is on (conftest), so resuming is exact only if the RNG is restored.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from flywheel.core import artifacts
from flywheel.core.artifacts import CURRENT
from flywheel.core.catalog import Catalog
from flywheel.core.spec import load_spec
from flywheel.train import state
from flywheel.train.loader import PackedStream, train_files
from flywheel.train.model import build_model, load_model
from flywheel.train.optim import OptimizerArgs, build_optimizer
from flywheel.train.pretrain import read_inputs, work_fingerprint
from flywheel.train.trainer import Position, make_scheduler, train
from tests.train.conftest import (
    PRODUCT,
    build_inputs,
    done_record,
    entry_argv,
    entry_env,
    run_entry,
    work_dir,
)


# -- resumable state, in process -------------------------------------------------------
def test_fingerprint_ignores_cadence_but_not_math(packed_inputs: Path) -> None:
    inputs = read_inputs(load_spec(packed_inputs))

    def fp(*overrides: str) -> str:
        return work_fingerprint(load_spec(packed_inputs, list(overrides)), inputs)

    base = fp()
    assert fp("pretrain.log_every=1", "pretrain.save_every=3", "pretrain.num_workers=2") == base
    assert fp("pretrain.keep_checkpoints=5") == base
    # how the run is launched: Ray Train resumes what accelerate launch began, and back
    assert fp("pretrain.launcher=ray", "pretrain.max_restarts=5") == base
    assert fp("pretrain.lr=0.01") != base and fp("pretrain.steps=61") != base
    assert fp("model.config.hidden_size=64") != base


def test_rng_state_round_trips() -> None:
    import random

    import numpy as np

    saved = state.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    state.set_rng_state(saved)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


# each optimizer at a learning rate that suits it (adafactor's is relative to weight RMS)
LR = {"adamw": 3e-3, "adafactor": 3e-2, "muon": 3e-3}


def _run(
    accelerator, spec, work: Path, resume: Path | None, steps: int = 8, optimizer: str = "adamw"
) -> Position:
    """What the entry does, in process: build or load, optionally restore, train, save."""
    shards = read_inputs(spec).dataset
    torch.manual_seed(0)
    model = load_model(resume) if resume else build_model(spec.model, 400, 64)
    args = OptimizerArgs(optimizer, LR[optimizer], 0.1, (0.9, 0.95), 1e-8)
    opt = build_optimizer(model, args)
    sched = make_scheduler(opt, 2, steps, 0.1)
    model, opt = accelerator.prepare(model, opt)
    pos = state.load_position(resume) if resume else Position()
    batches = iter(PackedStream(train_files(shards), 4, seed=0, start_batch=pos.batches))
    if resume:
        state.restore(accelerator, resume, opt, sched)

    def save(p: Position) -> None:
        state.save(accelerator, work, model, opt, sched, p, keep=3)

    return train(
        accelerator, model, opt, sched, batches, pos,
        steps=steps, grad_accum=1, max_grad_norm=1.0, tokens_per_step=256, log_every=100,
        save_every=4, on_save=save,
    )  # fmt: skip


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor", "muon"])
def test_save_and_restore_continue_the_same_trajectory(
    packed_inputs: Path, tmp_path: Path, fresh_accelerator, optimizer: str
) -> None:
    spec = load_spec(packed_inputs)
    work = tmp_path / "work"
    straight = _run(fresh_accelerator(), spec, work, None, optimizer=optimizer)
    assert sorted(p.name for p in work.iterdir()) == ["step-0000004", "step-0000008"]
    shutil.rmtree(work / "step-0000008")
    resume = state.find_resumable(work, warn=pytest.fail)
    assert resume == work / "step-0000004"
    resumed = _run(fresh_accelerator(), spec, work, resume, optimizer=optimizer)
    assert resumed.step == straight.step == 8 and resumed.batches == 8
    assert resumed.losses == straight.losses  # bit for bit, dropout included


def test_corrupt_checkpoints_are_named_and_skipped(
    packed_inputs: Path, tmp_path: Path, fresh_accelerator
) -> None:
    work = tmp_path / "work"
    _run(fresh_accelerator(), load_spec(packed_inputs), work, None, steps=12)
    with open(work / "step-0000012" / "model.safetensors", "r+b") as f:
        f.truncate(100)
    (work / "step-0000008" / "training_state" / "rng-0.pt").unlink()
    (work / ".staging-step-0000016").mkdir()  # a writer killed mid-save
    warnings: list[str] = []
    assert state.find_resumable(work, warnings.append) == work / "step-0000004"
    assert "step-0000012 is corrupt: model.safetensors has 100 bytes" in warnings[0]
    assert "step-0000008 is corrupt: training_state/rng-0.pt is missing" in warnings[1]
    assert (work / "corrupt-step-0000012").is_dir() and not (
        work / ".staging-step-0000016"
    ).exists()


# -- the entry, end to end -------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished 60-step run through ``accelerate launch`` (launch.command): (dir, log)."""
    root = tmp_path_factory.mktemp("trained")
    spec_path = build_inputs(root)
    proc = run_entry(spec_path)
    return root, proc.stderr


def clone(trained: tuple[Path, str], tmp_path: Path, keep_run: bool = True) -> Path:
    """A private copy of the trained directory (its spec path), optionally without the run."""
    target = tmp_path / "run"
    shutil.copytree(trained[0], target)
    if not keep_run:
        shutil.rmtree(target / "data" / PRODUCT)
    return target / "flywheel.yaml"


@pytest.mark.integration
def test_loss_falls_and_a_loadable_checkpoint_is_published(trained) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, log = trained
    record = done_record(root / "data")
    meta = record["metadata"]
    assert "step 60/60" in log and meta["steps"] == 60 and meta["resumed_from_step"] == 0
    assert meta["final_loss"] < meta["first_loss"] - 0.8 and meta["min_loss"] <= meta["final_loss"]
    assert meta["loss_curve"][0][0] == 1 and meta["loss_curve"][-1] == [
        60,
        round(meta["final_loss"], 5),
    ]
    assert meta["tokens"] == 60 * 4 * 64
    # Throughput is over the reported training time (train_seconds is rounded to 1 ms).
    seconds = meta["tokens"] / meta["tokens_per_s"]
    assert seconds == pytest.approx(meta["train_seconds"], abs=1e-3)
    assert meta["num_processes"] == 1 and meta["precision"] == "no"
    assert meta["optimizer"] == "adamw"  # two fp32 moments per parameter
    assert meta["optimizer_state_bytes_per_param"] == pytest.approx(8.0, rel=1e-2)
    path = Path(meta["checkpoint"])
    assert path.parent == root / "data" / PRODUCT and path.name == record["version"]
    assert (root / "data" / PRODUCT / CURRENT).read_text() == record["version"]
    names = {p.name for p in path.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "manifest.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth"))]
    artifact = artifacts.verify(path)
    spec = load_spec(root / "flywheel.yaml")
    inputs = read_inputs(spec)
    assert artifact.meta["lineage"] == {**inputs.lineage, "parent": None}
    assert artifact.meta["spec"]["pretrain"]["steps"] == 60
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    assert meta["parameters"] == sum(p.numel() for p in model.parameters())  # tied: once
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    ids = tok("The for statement iterates over the items of a sequence.", return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**ids, labels=ids["input_ids"]).loss)
    (row,) = Catalog.open(spec.catalog).query("SELECT * FROM checkpoints").to_dicts()
    assert row["checkpoint"] == record["version"] and row["stage"] == "pretrain"
    assert json.loads(row["inputs"])["tokenized_dataset"] == inputs.dataset.version


@pytest.mark.integration
def test_muon_run_publishes_and_reports_its_optimizer(tmp_path: Path) -> None:
    spec_path = build_inputs(tmp_path)
    sets = ("pretrain.optimizer=muon", "pretrain.steps=8", "pretrain.save_every=4")
    proc = run_entry(spec_path, *sets, launcher=False)
    meta = done_record(tmp_path / "data")["metadata"]
    assert "step 8/8" in proc.stderr and meta["final_loss"] < meta["first_loss"]
    assert meta["optimizer"] == "muon" and 4 < meta["optimizer_state_bytes_per_param"] < 8
    saved = torch.load(
        work_dir(tmp_path / "data") / "step-0000008" / state.STATE / "optimizer.pt",
        weights_only=True,
    )
    assert "momentum_buffer" in saved["state"][0]  # Muon's state is in the resumable checkpoint


@pytest.mark.integration
def test_rerun_reuses_the_published_version(trained, tmp_path: Path) -> None:
    spec_path = clone(trained, tmp_path)
    data = spec_path.parent / "data"
    before = done_record(data)
    (data / PRODUCT / CURRENT).write_text("v-something-else")  # another run published since
    proc = run_entry(spec_path, launcher=False)
    assert f"already trained: reusing {before['version']}" in proc.stderr
    assert "step 1/" not in proc.stderr  # nothing trained
    assert (data / PRODUCT / CURRENT).read_text() == before["version"]
    assert len(list((data / PRODUCT).glob("v-*"))) == 1
    rows = Catalog.open(load_spec(spec_path).catalog).query("SELECT checkpoint FROM checkpoints")
    assert rows["checkpoint"].to_list() == [before["version"]]  # recorded again, not twice
    assert f"result (version {before['version']})" in proc.stderr


def _final_loss(trained) -> float:
    return done_record(trained[0] / "data")["metadata"]["final_loss"]


@pytest.mark.integration
def test_resumed_run_continues_the_same_trajectory(trained, tmp_path: Path) -> None:
    spec_path = clone(trained, tmp_path)
    work = work_dir(spec_path.parent / "data")
    (work / "done.json").unlink()
    for step in (40, 50, 60):
        shutil.rmtree(state.step_dir(work, step))
    proc = run_entry(spec_path, launcher=False)
    assert "resuming from step-0000030: step 30, batch 30" in proc.stderr
    meta = done_record(spec_path.parent / "data")["metadata"]
    original = done_record(trained[0] / "data")["metadata"]
    assert meta["steps"] == 60 and meta["resumed_from_step"] == 30
    assert abs(meta["final_loss"] - original["final_loss"]) < 1e-6
    assert meta["loss_curve"] == original["loss_curve"]


@pytest.mark.integration
def test_kill_9_mid_run_then_resume(trained, tmp_path: Path) -> None:
    spec_path = clone(trained, tmp_path, keep_run=False)
    data = spec_path.parent / "data"
    proc = subprocess.Popen(
        entry_argv(spec_path),  # accelerate launch: the trainer is a child of the launcher
        cwd=spec_path.parent,
        env=entry_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not list(data.glob(f"{PRODUCT}/work/*/step-0000010/manifest.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "no first checkpoint"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the training process
    proc.wait(timeout=30)
    work = work_dir(data)
    last = max(int(p.name.split("-")[1]) for p in work.glob("step-*"))
    assert not (work / "done.json").exists() and last < 60, "the run finished before the kill"

    rerun = run_entry(spec_path, launcher=False)
    assert f"resuming from step-{last:07d}: step {last}" in rerun.stderr
    meta = done_record(data)["metadata"]
    assert meta["steps"] == 60 and meta["resumed_from_step"] == last
    assert abs(meta["final_loss"] - _final_loss(trained)) < 1e-5


@pytest.mark.integration
def test_corrupt_newest_checkpoint_falls_back(trained, tmp_path: Path) -> None:
    spec_path = clone(trained, tmp_path)
    work = work_dir(spec_path.parent / "data")
    (work / "done.json").unlink()
    with open(work / "step-0000060" / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    (work / "step-0000050" / "training_state" / "optimizer.pt").unlink()
    proc = run_entry(spec_path, launcher=False)
    assert "step-0000060 is corrupt: model.safetensors has 1000 bytes" in proc.stderr
    assert "step-0000050 is corrupt: training_state/optimizer.pt is missing" in proc.stderr
    assert "resuming from step-0000040: step 40" in proc.stderr
    meta = done_record(spec_path.parent / "data")["metadata"]
    assert meta["steps"] == 60 and abs(meta["final_loss"] - _final_loss(trained)) < 1e-6
    assert artifacts.verify(work / "step-0000060")  # written again, good this time


@pytest.mark.integration
def test_bf16_on_cpu_with_checkpointing_and_accumulation(tmp_path: Path) -> None:
    spec_path = build_inputs(tmp_path)
    overrides = [
        "pretrain.steps=6",
        "pretrain.precision=bf16",  # CPU autocast (see loop.resolve_precision)
        "pretrain.gradient_checkpointing=true",
        "pretrain.grad_accum=2",
        "pretrain.num_workers=2",
    ]
    proc = run_entry(spec_path, *overrides, launcher=False)
    assert "training from scratch" in proc.stderr and "step 6/6" in proc.stderr
    meta = done_record(tmp_path / "data")["metadata"]
    assert meta["precision"] == "bf16" and meta["tokens"] == 6 * 2 * 4 * 64
    assert meta["final_loss"] < meta["first_loss"]
    config = json.loads((Path(meta["checkpoint"]) / "config.json").read_text())
    assert config["use_cache"] is True  # the published model still generates with a cache

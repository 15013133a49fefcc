"""SFT: assistant-only labels, resume choice, and real runs of the entry point on a tiny model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from flywheel.core import artifacts
from flywheel.core.catalog import Catalog
from flywheel.core.report import loss_curve
from flywheel.core.settings.train import SftData, SftSettings
from flywheel.core.spec import load_spec
from flywheel.train import launch
from flywheel.train.finetune import run_fingerprint
from flywheel.train.sft import build_trainer, sft_config
from flywheel.train.sft_data import load_sft_data
from flywheel.train.sft_resume import checkpoint_problem, resumable_checkpoint
from tests.loop.eval.conftest import build_pretrained, write_spec

SPEC = """
data_dir: data
catalog: catalog.duckdb
sft:
  steps: {steps}
  micro_batch: {micro_batch}
  lr: 0.003
  warmup_steps: 2
  save_every: {save_every}
  log_every: 1
  max_length: 64
  data: {{kind: arithmetic, num_examples: 400, max_operand: 9}}
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("sft-template") / "data"
    build_pretrained(data_dir)
    return data_dir


def _project(tmp_path: Path, template: Path, steps=40, micro_batch=16, save_every=20) -> Path:
    shutil.copytree(template, tmp_path / "data")
    body = SPEC.format(steps=steps, micro_batch=micro_batch, save_every=save_every)
    return write_spec(tmp_path, body)


def _sft(spec: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    sets = [a for o in overrides for a in ("--set", o)]
    cmd = [sys.executable, "-m", "flywheel.train.sft", "--spec", str(spec), *sets]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=spec.parent, timeout=300)


def _work(data_dir: Path) -> Path:
    (work,) = (data_dir / "sft_checkpoint" / "work").iterdir()
    return work


def _saved(data_dir: Path) -> bool:
    """Whether the run's work directory holds a complete, resumable checkpoint."""
    root = data_dir / "sft_checkpoint" / "work"
    works = list(root.iterdir()) if root.is_dir() else []
    return len(works) == 1 and resumable_checkpoint(works[0])[0] is not None


# -- unit: the pieces a run is made of ------------------------------------------------------


def test_labels_cover_exactly_the_assistant_answer(tmp_path: Path, template: Path) -> None:
    """With assistant_only_loss, only the answer and its <|im_end|> are trained on."""
    spec = load_spec(_project(tmp_path, template))
    parent = artifacts.read_current(spec.product_dir("pretrained_checkpoint"))
    data = load_sft_data(SftData(num_examples=20, max_operand=99))
    trainer = build_trainer(sft_config(spec.sft, tmp_path / "out"), parent.path, "sdpa", data)
    tok = trainer.processing_class
    for example, row in zip(data.examples, trainer.train_dataset, strict=True):
        ids, labels = row["input_ids"], row["labels"]
        trained = [i for i, label in zip(ids, labels, strict=True) if label != -100]
        assert [lab for lab in labels if lab != -100] == trained  # labels are the inputs
        answer = example["messages"][1]["content"]
        assert tok.decode(trained) == answer + "<|im_end|>"
        # The trained span is contiguous and ends right before the template's final newline.
        first = next(i for i, label in enumerate(labels) if label != -100)
        assert all(label != -100 for label in labels[first:-1]) and labels[-1] == -100
        prompt = tok.apply_chat_template(
            example["messages"][:1], add_generation_prompt=True, tokenize=False
        )
        assert tok.decode(ids[:first]) == prompt


def _fake_checkpoint(
    path: Path, state: bool = True, optimizer: bool = True, manifest: bool = True
) -> Path:
    path.mkdir(parents=True)
    save_file({"w": torch.zeros(4, 4)}, str(path / "model.safetensors"))
    if optimizer:
        torch.save({"exp_avg": torch.ones(3)}, path / "optimizer.pt")
    if state:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    if manifest:
        artifacts.write_manifest(path)
    return path


def test_resume_picks_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    good = _fake_checkpoint(tmp_path / "checkpoint-5")
    assert checkpoint_problem(good) is None
    _fake_checkpoint(tmp_path / "checkpoint-25", manifest=False)  # killed while saving
    flipped = _fake_checkpoint(tmp_path / "checkpoint-20")
    data = bytearray((flipped / "optimizer.pt").read_bytes())
    data[-40] ^= 0xFF  # one flipped byte: same size, still unpicklable or wrong values
    (flipped / "optimizer.pt").write_bytes(bytes(data))
    torn = _fake_checkpoint(tmp_path / "checkpoint-15")
    data = (torn / "model.safetensors").read_bytes()
    (torn / "model.safetensors").write_bytes(data[: len(data) // 2])
    _fake_checkpoint(tmp_path / "checkpoint-10", optimizer=False)
    (tmp_path / "checkpoint-notastep").mkdir()

    chosen, bad = resumable_checkpoint(tmp_path)
    assert chosen == good
    reasons = {p.name: why for p, why in bad}
    assert list(reasons) == [f"checkpoint-{n}" for n in (25, 20, 15, 10)]  # newest first
    assert reasons["checkpoint-25"] == "no manifest.json: the save was interrupted"
    assert reasons["checkpoint-20"] == "corrupt: optimizer.pt fails its sha256"
    assert reasons["checkpoint-15"].startswith("corrupt: model.safetensors has ")
    assert "optimizer.pt is missing" in reasons["checkpoint-10"]
    assert resumable_checkpoint(tmp_path / "empty") == (None, [])


def test_loss_curve_spans_the_whole_run() -> None:
    losses = [(s, 10.0 / s) for s in range(1, 8)]
    assert loss_curve(losses) == [[s, round(10.0 / s, 5)] for s in range(1, 8)]  # few: all kept
    many = [(s, 1.0) for s in range(1, 101)]
    steps = [s for s, _ in loss_curve(many, points=20)]
    assert len(steps) == 20 and steps[0] == 1 and steps[-1] == 100
    assert loss_curve([]) == []


def test_fingerprint_ignores_bookkeeping_only() -> None:
    data = load_sft_data(SftData(num_examples=10))
    base = run_fingerprint(SftSettings(), "v1", data)
    assert run_fingerprint(SftSettings(save_every=7, log_every=3), "v1", data) == base
    assert run_fingerprint(SftSettings(lr=1e-4), "v1", data) != base
    assert run_fingerprint(SftSettings(), "v2", data) != base
    other = load_sft_data(SftData(num_examples=11))
    assert run_fingerprint(SftSettings(), "v1", other) != base


def test_config_follows_the_spec(tmp_path: Path) -> None:
    fields = {"steps": 7, "micro_batch": 3, "grad_accum": 2, "lr": 1e-4, "min_lr_ratio": 0.2}
    settings = SftSettings(**fields, beta2=0.9, save_every=4, keep_checkpoints=3)
    config = sft_config(settings, tmp_path / "work")
    assert (config.max_steps, config.per_device_train_batch_size) == (7, 3)
    assert (config.gradient_accumulation_steps, config.learning_rate) == (2, 1e-4)
    assert config.lr_scheduler_type == "cosine_with_min_lr"
    assert config.lr_scheduler_kwargs == {"min_lr_rate": 0.2}
    assert (config.adam_beta2, config.save_steps, config.save_total_limit) == (0.9, 4, 3)
    assert config.assistant_only_loss and config.max_length == settings.max_length
    # TRL's defaults (bf16, gradient checkpointing on) do not leak into a CPU fp32 run.
    assert config.use_cpu and not config.bf16 and not config.fp16
    assert not config.gradient_checkpointing
    assert config.report_to in ([], "none", ["none"])


# -- integration: the entry point, out of process --------------------------------------------


@pytest.mark.integration
def test_sft_run_lowers_loss_and_publishes(tmp_path: Path, template: Path) -> None:
    from transformers import AutoModelForCausalLM

    from flywheel.train.tokenizer import load_tokenizer

    spec = load_spec(_project(tmp_path, template))
    argv = launch.command("sft", spec, launch.write_run_spec(spec, "sft"))
    assert "accelerate.commands.launch" in argv
    run = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "step 1/40: loss=" in run.stderr  # training logs stream through the reporter

    root = spec.product_dir("sft_checkpoint")
    artifact = artifacts.read_current(root)
    metrics = artifact.meta["metrics"]
    assert metrics["steps"] == 40
    assert metrics["final_loss"] < 0.6 * metrics["first_loss"]
    assert metrics["tokens_per_s"] > 0 and metrics["resumed_from_step"] == 0
    assert metrics["optimizer"] == "adamw"  # built by flywheel.train.optim, through Trainer
    assert metrics["optimizer_state_bytes_per_param"] == pytest.approx(8.0, rel=1e-2)
    parent = artifacts.read_current(spec.product_dir("pretrained_checkpoint"))
    assert artifact.meta["lineage"]["pretrained_checkpoint"] == parent.version
    assert artifact.meta["lineage"]["examples"] == 400
    assert artifact.meta["spec"]["sft"]["steps"] == 40

    # A loadable, safetensors-only Hugging Face directory with the chat tokenizer.
    names = {p.name for p in artifact.path.iterdir()}
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    model = AutoModelForCausalLM.from_pretrained(artifact.path, local_files_only=True)
    tok = load_tokenizer(artifact.path)
    assert "generation" in tok.chat_template
    assert tok.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id

    row = (
        Catalog.open(spec.catalog)
        .query("SELECT * FROM checkpoints WHERE stage = 'sft'")
        .row(0, named=True)
    )
    assert (row["checkpoint"], row["parent"]) == (artifact.version, parent.version)
    work = _work(spec.data_dir)
    assert json.loads((work / "done.json").read_text())["version"] == artifact.version
    assert not list(work.glob("checkpoint-*"))  # resumable state is dropped once published

    # The same spec again trains nothing and reports the same version.
    again = _sft(tmp_path / "flywheel.yaml")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"already published as {artifact.version}" in again.stderr
    assert "step 1/40" not in again.stderr  # no training
    assert artifacts.read_current(root).version == artifact.version


@pytest.mark.integration
def test_interrupted_run_resumes_past_a_corrupt_checkpoint(tmp_path: Path, template: Path) -> None:
    spec_path = _project(tmp_path, template, steps=40, micro_batch=8, save_every=5)
    cmd = [sys.executable, "-m", "flywheel.train.sft", "--spec", str(spec_path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    # a complete checkpoint, not only its trainer_state.json: Trainer writes that before the
    # rest of the checkpoint, and a kill in between left none to copy (a CI run hit it)
    while not _saved(tmp_path / "data"):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint was saved"
        time.sleep(0.05)
    proc.kill()  # preempted mid-run
    proc.communicate()
    assert not (tmp_path / "data" / "sft_checkpoint" / "CURRENT").exists()

    # A newer checkpoint whose weights were torn (e.g. the disk filled up while saving).
    work = _work(tmp_path / "data")
    good, _ = resumable_checkpoint(work)
    torn = shutil.copytree(good, work / "checkpoint-39")
    weights = torn / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])

    run = _sft(spec_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"cannot resume from {torn}: corrupt: model.safetensors has 1000 bytes" in run.stderr
    assert f"resuming from {good}" in run.stderr
    assert (work / "corrupt-checkpoint-39").is_dir()  # set aside, not deleted
    resumed_at = int(good.name.split("-")[1])
    metrics = artifacts.read_current(tmp_path / "data" / "sft_checkpoint").meta["metrics"]
    assert metrics["steps"] == 40
    assert metrics["resumed_from_step"] == resumed_at
    assert [metrics["loss_curve"][i][0] for i in (0, -1)] == [1, 40]  # both sessions

    # Resuming continues the same run: an uninterrupted one ends at the same loss.
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    run = _sft(_project(baseline, template, steps=40, micro_batch=8, save_every=5))
    assert run.returncode == 0, run.stderr[-3000:]
    expected = artifacts.read_current(baseline / "data" / "sft_checkpoint").meta["metrics"]
    assert metrics["final_loss"] == pytest.approx(expected["final_loss"], rel=1e-5)

"""FSDP2 pre-training on two CPU (gloo) ranks: sharded resumable checkpoints, full published model.

Accelerate turns a config's ``distributed_type: FSDP`` on only for accelerator devices; on a
CPU machine it runs MULTI_CPU (DDP) instead, which the entry refuses (``state.check_supported``).
PyTorch's ``fully_shard`` itself works on CPU tensors over gloo, so the integration tests launch
the entry through ``_SHIM``, which tells Accelerate that the ranks are of a multi-device kind
before the entry builds its ``Accelerator(cpu=True)``: the device stays CPU, and everything after
that (Accelerate's FSDP2 preparation, ``save_state`` / ``load_state``, our checkpoints) is real.
The shipped ``configs/accelerate/fsdp.yaml`` is what they run.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from flywheel.core import artifacts
from flywheel.core.spec import load_spec
from flywheel.train import launch, state
from tests.train.conftest import PRODUCT, build_inputs, done_record, entry_env, work_dir

ROOT = Path(__file__).resolve().parents[2]
FSDP_CONFIG = ROOT / "configs" / "accelerate" / "fsdp.yaml"
_SHIM = """
from accelerate.state import PartialState
from accelerate.utils import DistributedType

PartialState(cpu=True)  # gloo ranks on CPU
PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU  # let FSDP on

from flywheel.train.pretrain import main

main()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_fsdp(
    spec_path: Path, *overrides: str, config: Path = FSDP_CONFIG, shim: bool = True
) -> subprocess.CompletedProcess[str]:
    """``launch.command`` for a two-rank FSDP spec, with the entry module swapped for the shim."""
    sets = ["pretrain.num_processes=2", f"pretrain.accelerate_config={config}", *overrides]
    spec = load_spec(spec_path, sets)
    argv = launch.command("pretrain", spec, launch.write_run_spec(spec, "pretrain"))
    launcher = argv.index("accelerate.commands.launch") + 1
    argv[launcher:launcher] = ["--main_process_port", str(_free_port())]
    if shim:
        script = spec_path.parent / "fsdp_on_cpu.py"
        script.write_text(_SHIM)
        module = len(argv) - argv[::-1].index("-m") - 1  # the entry's -m, not the launcher's
        argv[module : module + 2] = [str(script)]
    env = entry_env(**{state.DEBUG_ENV: "1"})
    return subprocess.run(
        argv, cwd=spec_path.parent, env=env, capture_output=True, text=True, timeout=300
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc.stderr


def _config(root: Path, state_dict_type: str) -> Path:
    """The shipped FSDP config, or a copy of it with another ``fsdp_state_dict_type``."""
    text = FSDP_CONFIG.read_text()
    if f"fsdp_state_dict_type: {state_dict_type}" in text:
        return FSDP_CONFIG
    variant = root / "fsdp.yaml"
    variant.write_text(text.replace("FULL_STATE_DICT", state_dict_type))
    return variant


@pytest.fixture(scope="module", params=["FULL_STATE_DICT", "SHARDED_STATE_DICT"])
def fsdp_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """A finished 20-step FSDP run, checkpoints at 10 and 20: (its directory, its config)."""
    root = tmp_path_factory.mktemp("fsdp")
    config = _config(root, request.param)
    log = _ok(_run_fsdp(build_inputs(root), "pretrain.steps=20", config=config))
    assert "training from scratch" in log and "step 20/20" in log
    return root, config


@pytest.mark.integration
def test_fsdp_checkpoint_is_sharded_state_plus_a_full_model(fsdp_run: tuple[Path, Path]) -> None:
    from transformers import AutoModelForCausalLM

    root = fsdp_run[0]
    saved = state.step_dir(work_dir(root / "data"), 10)
    artifacts.verify(saved)  # every rank's files are in the manifest
    training_state = saved / state.STATE
    names = {p.relative_to(training_state).as_posix() for p in training_state.rglob("*")}
    assert {"data.json", "scheduler.pt", "rng-0.pt", "rng-1.pt", state.ACCELERATE} <= names
    assert "optimizer.pt" not in names  # no rank holds the whole optimizer state
    assert any(n.startswith(f"{state.ACCELERATE}/optimizer") for n in names), names
    # each rank trained on its own rows; the recorded loss is their mean (FLYWHEEL_TRAIN_DEBUG)
    debug = [json.loads((saved / state.STATE / f"debug-{r}.json").read_text()) for r in (0, 1)]
    losses = json.loads((saved / state.STATE / "data.json").read_text())["losses"]
    mean = [(a + b) / 2 for a, b in zip(debug[0]["losses"], debug[1]["losses"], strict=True)]
    assert losses == pytest.approx(mean, abs=1e-6) and debug[0]["losses"] != debug[1]["losses"]

    meta = done_record(root / "data")["metadata"]
    assert meta["num_processes"] == 2 and meta["tokens"] == 20 * 4 * 2 * 64
    assert meta["final_loss"] < meta["first_loss"]
    published = Path(meta["checkpoint"])
    config = json.loads((published / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # not the FSDP-wrapped class
    model = AutoModelForCausalLM.from_pretrained(published, local_files_only=True)
    assert sum(p.numel() for p in model.parameters()) == meta["parameters"]  # gathered, whole
    ids = torch.arange(1, 33).unsqueeze(0)
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss)


@pytest.mark.integration
def test_fsdp_resume_continues_the_same_trajectory(
    fsdp_run: tuple[Path, Path], tmp_path: Path
) -> None:
    root, config = fsdp_run
    shutil.copytree(root, tmp_path / "run")
    spec_path, data = tmp_path / "run" / "flywheel.yaml", tmp_path / "run" / "data"
    work = work_dir(data)
    (work / "done.json").unlink()
    shutil.rmtree(state.step_dir(work, 20))
    log = _ok(_run_fsdp(spec_path, "pretrain.steps=20", config=config))
    assert "resuming from step-0000010: step 10, batch 10" in log
    meta, original = done_record(data)["metadata"], done_record(root / "data")["metadata"]
    assert meta["resumed_from_step"] == 10 and meta["steps"] == 20
    # dropout is on: equal only if weights, AdamW moments, schedule and RNG all came back
    assert meta["loss_curve"] == original["loss_curve"]
    assert abs(meta["final_loss"] - original["final_loss"]) < 1e-6


@pytest.mark.integration
def test_fsdp_config_on_plain_cpu_ranks_is_refused(tmp_path: Path) -> None:
    # without the shim Accelerate would quietly train DDP; the entry says so instead
    proc = _run_fsdp(build_inputs(tmp_path), "pretrain.steps=2", shim=False)
    assert proc.returncode != 0
    assert "asks for FSDP, but Accelerate runs MULTI_CPU here" in proc.stderr
    assert not (tmp_path / "data" / PRODUCT / "work").exists()


def test_deepspeed_is_refused_with_the_alternatives(fresh_accelerator, monkeypatch) -> None:
    accelerator = fresh_accelerator()
    state.check_supported(accelerator)  # one process: fine
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what a DeepSpeed config sets
    with pytest.raises(NotImplementedError, match=r"Use FSDP .*or DeepSpeed through sft"):
        state.check_supported(accelerator)

"""The launcher: the argv a stage runs with, and its resolved spec file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from flywheel.core.spec import load_spec
from flywheel.train import launch
from tests.conftest import write_spec

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


def _spec(tmp_path: Path, *overrides: str):
    path = write_spec(tmp_path, "name: t\ndata_dir: data\n")
    return load_spec(path, list(overrides))


def test_single_process_command(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    argv = launch.command("pretrain", spec, Path("/s.yaml"))
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert argv[-4:] == ["-m", "flywheel.train.pretrain", "--spec", "/s.yaml"]
    assert "--multi_gpu" not in argv and "--cpu" not in argv


def test_each_rank_gets_its_share_of_the_cores(tmp_path: Path, monkeypatch) -> None:
    """Without it accelerate runs every rank on OMP_NUM_THREADS=1, one core of the machine."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(launch.os, "sched_getaffinity", lambda pid: set(range(8)))
    for processes, threads in [(1, "8"), (2, "4"), (3, "2"), (16, "1")]:
        spec = _spec(tmp_path, f"sft.num_processes={processes}")
        argv = launch.command("sft", spec, Path("/s.yaml"))
        assert argv[argv.index("--num_cpu_threads_per_process") + 1] == threads
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stands
    assert "--num_cpu_threads_per_process" not in launch.command("sft", _spec(tmp_path), Path("/s"))


def test_multi_process_uses_multi_gpu_not_cpu(tmp_path: Path) -> None:
    # `--cpu` silently starts one process; `--multi_gpu` + Accelerator(cpu=True) gives gloo ranks.
    argv = launch.command("sft", _spec(tmp_path, "sft.num_processes=2"), Path("/s.yaml"))
    assert "--multi_gpu" in argv and "--cpu" not in argv
    assert argv[argv.index("--num_processes") + 1] == "2"
    assert "flywheel.train.sft" in argv


def test_accelerate_config_file_replaces_flags(tmp_path: Path) -> None:
    cfg = CONFIGS / "fsdp.yaml"
    spec = _spec(tmp_path, f"pretrain.accelerate_config={cfg}", "pretrain.num_processes=8")
    argv = launch.command("pretrain", spec, Path("/s.yaml"))
    assert argv[argv.index("--config_file") + 1] == str(cfg)
    assert argv[argv.index("--num_processes") + 1] == "8"
    assert "--multi_gpu" not in argv


def test_ray_launcher_runs_the_driver_for_every_training_stage(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "sft.launcher=ray", "sft.num_processes=2")
    argv = launch.command("sft", spec, Path("/s.yaml"), ["--input", "p=v-1"])
    driver = [sys.executable, "-m", "flywheel.train.ray_launch", "sft"]
    assert argv == [*driver, "--spec", "/s.yaml", "--input", "p=v-1"]
    # a cycle's retraining (and the PPO stage inside it) launches with sft's launcher
    retrain = launch.command("retrain", spec, Path("/s.yaml"), ["--cycle", "2"])
    assert retrain[2:4] == ["flywheel.train.ray_launch", "retrain"]
    assert retrain[-2:] == ["--cycle", "2"]
    assert "accelerate.commands.launch" in launch.command("pretrain", spec, Path("/s.yaml"))


def test_ray_launcher_refuses_an_accelerate_config(tmp_path: Path) -> None:
    cfg = CONFIGS / "multi_gpu.yaml"
    with pytest.raises(Exception, match="accelerate_config configures `accelerate launch`"):
        _spec(tmp_path, "pretrain.launcher=ray", f"pretrain.accelerate_config={cfg}")


def test_ray_workers_record_their_starts(tmp_path: Path) -> None:
    from flywheel.train.ray_launch import forwarded_env, read_attempts, record_attempt

    attempts = tmp_path / "run" / "attempts.jsonl"
    # a restarted group: rank 1 may record before or after rank 0; only rank 0 numbers
    assert [record_attempt(attempts, r, f"n{r}") for r in (1, 0, 0, 1)] == [0, 1, 2, 0]
    starts = read_attempts(attempts)
    assert [(a["rank"], a["attempt"], a["node"]) for a in starts] == [
        (1, 0, "n1"), (0, 1, "n0"), (0, 2, "n0"), (1, 0, "n1"),
    ]  # fmt: skip
    env = {"DAGSTER_PIPES_CONTEXT": "c", "FLYWHEEL_DAGSTER_RUN_ID": "r", "HF_HUB_OFFLINE": "1"}
    assert forwarded_env({**env, "PATH": "/bin", "HOME": "/root"}) == env


def test_eval_runs_without_accelerate(tmp_path: Path) -> None:
    argv = launch.command("eval", _spec(tmp_path), Path("/s.yaml"))
    assert argv == [sys.executable, "-m", "flywheel.loop.eval", "--spec", "/s.yaml"]


def test_unknown_stage(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown stage 'rl'"):
        launch.command("rl", _spec(tmp_path), Path("/s.yaml"))


def test_run_spec_is_resolved_and_reloadable(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "pretrain.lr=0.0003")
    path = launch.write_run_spec(spec, "pretrain")
    assert path == launch.write_run_spec(spec, "pretrain")  # content-addressed
    raw = yaml.safe_load(path.read_text())
    assert Path(raw["data_dir"]).is_absolute()
    again = load_spec(path)
    assert again.pretrain.lr == 3e-4 and again.data_dir == spec.data_dir


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_accelerate_configs_load(name: str) -> None:
    config = load_config_from_file(str(CONFIGS / name))
    assert config.num_processes >= 1 and not config.use_cpu

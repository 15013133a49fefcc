"""The project as a user outside the repository gets it: a wheel, a fresh virtual environment,
``flywheel init`` in an empty directory, then ``flywheel run`` to two cycles with a verifier
defined in that directory.

The wheel is built from the tracked files only, installed with the constraints into a venv
that shares nothing with the repository's (no editable install, no ``PYTHONPATH``); every
command runs from the temporary project directory.

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_install.py -s
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A verifier of the user's own, next to the spec: it accepts any answer that is a number, so a
# tiny seed model trained for seconds still has generations to turn two cycles with.
USER_VERIFIER = """
def is_number(prompt, completion, answer):
    text = completion.strip()
    return text.lstrip("-").isdigit(), "not_a_number"
"""
TINY = [
    "sources=[{name: docs, kind: python_env, include: [pydoc_topics]}]",
    "pretrain.steps=10",
    "sft.steps=40",
    "sft.save_every=20",
    "eval.perplexity_batches=2",
    "eval.tasks.0.num_examples=20",
    "generation.prompts.num_prompts=24",
    "generation.samples_per_prompt=2",
    "acceptance.verifier.function=user_checks:is_number",
    "cycles.threshold_rows=1",
    "cycles.max_cycles=1",
    "cycles.patience=5",
    "cycles.sensor_interval_s=1",
    "cycles.train.steps=10",
]


def _sh(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def build_wheel(out: Path) -> Path:
    """The wheel of the tracked tree (a copy, so the checkout gains no build/ or egg-info)."""
    src = out / "src"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, tracked.split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    argv = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*argv, "-w", str(out), str(src)], check=True, timeout=300)
    [wheel] = out.glob("flywheel-*.whl")
    return wheel


def fresh_venv(where: Path, wheel: Path) -> Path:
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(where)], check=True, timeout=120)
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "-q"]
    pip += ["--disable-pip-version-check", "-c", str(ROOT / "constraints.txt"), str(wheel)]
    subprocess.run(pip, check=True, timeout=900)
    return where / "bin"


def user_env(bin_dir: Path) -> dict[str, str]:
    """A shell with only the new venv on PATH: nothing of the repository is importable."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "FLYWHEEL_SPEC", "FLYWHEEL_SET", "DAGSTER_HOME"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


@pytest.mark.integration
def test_wheel_init_and_run_two_cycles_outside_the_repository(tmp_path: Path) -> None:
    bin_dir = fresh_venv(tmp_path / "venv", build_wheel(tmp_path / "dist"))
    env = user_env(bin_dir)
    flywheel = str(bin_dir / "flywheel")
    _sh([flywheel, "init", "my-flywheel"], cwd=tmp_path, env=env, timeout=60)
    project = tmp_path / "my-flywheel"
    (project / "user_checks.py").write_text(USER_VERIFIER)

    # The Dagster layer is the installed one, not the repository's.
    where = _sh(
        [str(bin_dir / "python"), "-c", "import definitions; print(definitions.__file__)"],
        cwd=project,
        env=env,
        timeout=120,
    )
    assert where.strip().startswith(str(tmp_path / "venv")), where
    checked = _sh([flywheel, "check", "flywheel.yaml", *TINY], cwd=project, env=env, timeout=120)
    assert "is valid" in checked

    sets = [arg for item in TINY for arg in ("--set", item)]
    out = _sh([flywheel, "run", *sets, "--timeout", "900"], cwd=project, env=env, timeout=1500)
    assert "cycle 1: run" in out and "reached cycles.max_cycles" in out, out[-3000:]
    assert (project / ".flywheel" / "dagster_home" / "dagster.yaml").exists()

    report = _sh([flywheel, "report", "--json"], cwd=project, env=env, timeout=120)
    rows = json.loads(report)["cycles"]
    assert [r["cycle"] for r in rows] == [0, 1], rows
    assert all(r["accepted"] > 0 for r in rows), rows  # the user's verifier accepted answers

    # The agent project ships in the wheel too, and its environment plays from the project.
    _sh([flywheel, "init", "--agent", "my-agent"], cwd=tmp_path, env=env, timeout=60)
    checked = _sh([flywheel, "check"], cwd=tmp_path / "my-agent", env=env, timeout=120)
    assert "spec 'my-agent' is valid" in checked

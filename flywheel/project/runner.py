"""Start a project's Dagster processes from any directory, with what the Makefile used to set.

    flywheel run [--spec S] [--set key=value ...] [--timeout SECONDS] [--skip-base]
    flywheel ui  [--spec S] [--set key=value ...] [--port 3000]

A project is the directory holding its spec. Both commands agree on one environment, so the
UI always opens the instance the run wrote to:

- ``DAGSTER_HOME``: the variable if it is set, else ``<spec dir>/.flywheel/dagster_home``;
  the project's ``dagster.yaml`` (or the packaged default) is its instance config;
- the workspace: ``<spec dir>/workspace.yaml`` if there is one, else one written into the home
  that loads the installed ``definitions`` module from the spec's directory;
- ``FLYWHEEL_SPEC`` (absolute) and ``FLYWHEEL_SET`` (the overrides) for the code location;
  ``PYTHONPATH`` with the spec's directory first, so every process (code server, run workers,
  training subprocesses) imports the user's verifiers and prompt sources;
- ``GX_ANALYTICS_ENABLED=False`` and ``HF_HUB_OFFLINE=1`` unless already set.

Nothing here imports dagster: ``run`` starts ``python -m jobs.run`` and ``ui`` starts
``dagster dev``, both installed with this package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from flywheel.core.spec import OVERRIDES_ENV, SPEC_ENV

HOME = Path(".flywheel") / "dagster_home"
WORKSPACE = "workspace.yaml"
INSTANCE = "dagster.yaml"


def template(name: str) -> str:
    """A file of ``flywheel/project/templates`` (shipped in the wheel)."""
    return resources.files("flywheel.project").joinpath("templates", name).read_text()


def dagster_home(spec_file: Path) -> Path:
    """The Dagster home of the project: ``$DAGSTER_HOME`` or ``<spec dir>/.flywheel/...``,
    created with the project's instance config (``dagster.yaml`` next to the spec, else the
    packaged default) when it has none or the project's changed."""
    home = Path(os.environ.get("DAGSTER_HOME") or spec_file.parent / HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    ours = spec_file.parent / INSTANCE
    wanted = ours.read_text() if ours.is_file() else None
    config = home / INSTANCE
    if wanted is not None and (not config.exists() or config.read_text() != wanted):
        config.write_text(wanted)
    elif not config.exists():
        config.write_text(template(INSTANCE))
    return home


def workspace_file(spec_file: Path, home: Path) -> Path:
    """The project's ``workspace.yaml``, or one in ``home`` loading the installed module."""
    ours = spec_file.parent / WORKSPACE
    if ours.is_file():
        return ours
    written = home / WORKSPACE
    here = f"working_directory: {spec_file.parent}"
    written.write_text(template(WORKSPACE).replace("working_directory: .", here))
    return written


def project_env(spec_file: Path, overrides: list[str], home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DAGSTER_HOME"] = str(home)
    env[SPEC_ENV] = str(spec_file)
    env[OVERRIDES_ENV] = json.dumps(overrides)
    path = [str(spec_file.parent), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    env.setdefault("GX_ANALYTICS_ENABLED", "False")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def program(name: str) -> str:
    """An executable installed beside this Python (the venv's bin), else on ``PATH``."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name!r} is not installed next to {sys.executable} or on PATH")
    return found


def run(
    spec_file: Path,
    overrides: list[str],
    timeout_s: float | None = None,
    skip_base: bool = False,
) -> int:
    """The whole graph, then the flywheel until the loop stops (``python -m jobs.run``)."""
    home = dagster_home(spec_file)
    argv = [sys.executable, "-m", "jobs.run", "--workspace", str(workspace_file(spec_file, home))]
    argv += ["--working-directory", str(spec_file.parent)]
    argv += ["--timeout", str(timeout_s)] if timeout_s else []
    argv += ["--skip-base"] if skip_base else []
    env = project_env(spec_file, overrides, home)
    return subprocess.call(argv, cwd=spec_file.parent, env=env)


def ui(spec_file: Path, overrides: list[str], host: str, port: int) -> int:
    """``dagster dev`` on the project's home and workspace: the instance ``run`` wrote to."""
    home = dagster_home(spec_file)
    argv = [program("dagster"), "dev", "-w", str(workspace_file(spec_file, home))]
    argv += ["-h", host, "-p", str(port)]
    print(f"flywheel ui: http://{host}:{port} (DAGSTER_HOME={home})", flush=True)
    env = project_env(spec_file, overrides, home)
    return subprocess.call(argv, cwd=spec_file.parent, env=env)

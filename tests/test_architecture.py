"""flywheel/ is a pure library: no module in it imports dagster, directly or at import time.

The one exception is ``dagster_pipes``, the dependency-free Pipes protocol package made for
external processes: training entry points use it (only in ``flywheel/train/report.py``, only
when launched by Dagster) to stream logs and report their materialization."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "flywheel"


def test_no_module_imports_dagster() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path}: {n}" for n in names if _is_dagster(n, path)]
    assert offenders == []


def _is_dagster(module: str, path: Path) -> bool:
    root = module.split(".")[0]
    if root == "dagster_pipes":
        return path.relative_to(PACKAGE).as_posix() != "train/report.py"
    return root.startswith("dagster")


def test_importing_every_module_loads_no_dagster() -> None:
    modules = [
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        for p in PACKAGE.rglob("*.py")
        if p.name != "__main__.py"
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m.removesuffix('.__init__'))\n"
        "bad = sorted(m for m in sys.modules if m.startswith('dagster'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

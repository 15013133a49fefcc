"""flywheel/ is a pure library: no module in it imports dagster, directly or at import time.

The one exception is ``dagster_pipes``, the dependency-free Pipes protocol package made for
external processes: training entry points use it (only in ``flywheel/core/report.py``, only
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
        return path.relative_to(PACKAGE).as_posix() != "core/report.py"
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


# --- layering: core < data < train < loop < cli -------------------------------------------

PLANES = {"core": 0, "data": 1, "train": 2, "loop": 3, "envs": 3}  # envs: beside the loop
TOP = 4  # flywheel.cli: the command line may use every plane


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Every flywheel module ``path`` imports, at module level or inside a function."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from flywheel.train import checkpoint`` imports the module flywheel.core.artifacts
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _exists(sub) else target)
    return {m for m in found if m == "flywheel" or m.startswith("flywheel.")}


def _exists(module: str) -> bool:
    rel = Path(*module.split("."))
    base = PACKAGE.parent
    return (base / rel).with_suffix(".py").is_file() or (base / rel / "__init__.py").is_file()


def _rank(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # the root package holds only __version__
    return PLANES.get(parts[1], TOP)


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_planes_are_packages_that_say_what_they_may_import() -> None:
    for plane in PLANES:
        init = PACKAGE / plane / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import:" in doc, f"{init} must say which packages it may import"


def test_no_module_imports_a_plane_above_its_own() -> None:
    upward = [
        f"{mod} ({_rank(mod)}) -> {dep} ({_rank(dep)})"
        for mod, deps in _graph().items()
        for dep in deps
        if _rank(dep) > _rank(mod)
    ]
    assert upward == []


def test_settings_import_only_settings() -> None:
    graph = _graph()
    bad = [
        f"{mod} -> {dep}"
        for mod, deps in graph.items()
        if mod.startswith("flywheel.core.settings")
        for dep in deps
        if not dep.startswith("flywheel.core.settings")
    ]
    assert bad == []


def test_no_import_cycles() -> None:
    """Packages excluded as nodes: an ``__init__`` that re-exports its submodules is not a cycle."""
    graph = _graph()
    packages = {_module(p) for p in PACKAGE.rglob("__init__.py")}
    edges = {
        m: {d for d in ds if d not in packages} for m, ds in graph.items() if m not in packages
    }
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []


def test_layering_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: a core module importing the loop is reported."""
    fake = PACKAGE / "core" / "_upward_probe.py"
    fake.write_text("from flywheel.loop import cycles\n")
    try:
        graph = _graph()
        assert "flywheel.loop.cycles" in graph["flywheel.core._upward_probe"]
        assert _rank("flywheel.loop.cycles") > _rank("flywheel.core._upward_probe")
    finally:
        fake.unlink()

"""The flow runs one way: the data side (`shards`, `data`) never imports the model, engine or task side — not at the
top of a module and not inside a function —, importing it pulls none of them in, and its modules form no cycle."""

import ast
import subprocess
import sys
from pathlib import Path

from launch_helpers import REPO, child_env

DATA_SIDE = [REPO / "mfvideo" / "shards", REPO / "mfvideo" / "data"]
FORBIDDEN = ("mfvideo.models", "mfvideo.engine", "mfvideo.tasks", "mfvideo.evaluation")


def imported_modules(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_no_data_module_imports_the_model_side_anywhere():
    offenders = {f"{path.relative_to(REPO)}: {name}" for package in DATA_SIDE for path in package.rglob("*.py")
                 for name in imported_modules(path) if name.startswith(FORBIDDEN)}
    assert not offenders


def test_importing_the_data_side_loads_no_model_code():
    modules = sorted(_module_name(p) for package in DATA_SIDE for p in package.rglob("*.py"))
    code = ("import sys, importlib\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            f"print(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r})))")
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(), cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_data_side_modules_import_each_other_without_cycles():
    paths = {_module_name(p): p for package in ("shards", "data") for p in (REPO / "mfvideo" / package).rglob("*.py")}
    graph = {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}
    cycles, state = [], {}

    def visit(name: str, stack: list[str]) -> None:
        state[name] = "open"
        stack.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert cycles == []

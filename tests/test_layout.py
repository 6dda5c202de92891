"""The flow runs one way: the data side never imports the model or engine side, and its modules form no cycle."""

import ast
import subprocess
import sys
from pathlib import Path

from launch_helpers import REPO, child_env

DATA_MODULES = ["mfvideo.data.pipeline", "mfvideo.data.stream", "mfvideo.shards", "mfvideo.shards.cli",
                "mfvideo.data.benchmark"]


def test_data_side_does_not_import_models_or_engine():
    code = ("import sys, importlib\n"
            f"for name in {DATA_MODULES!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('mfvideo.models', 'mfvideo.engine'))))")
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

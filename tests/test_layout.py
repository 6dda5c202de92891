"""The package is layered: each folder of `mfvideo/` is one stage, in one declared order (low to high), and a module
may import only from its own folder and those below it, at the top of a module or inside a function. So the data
side never imports the model side, no stage below the tasks knows a task, the engine is handed its parts, and every
folder is covered: a new folder must be placed in the order. Importing a layer pulls in nothing above it, and no two
modules import each other in a cycle."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from launch_helpers import REPO, child_env

PACKAGE = REPO / "mfvideo"
# Low to high: what a layer may import is itself and everything before it (docs/layout.md says what each holds).
LAYERS = (
    "common",
    "config",
    "targets",
    "shards",
    "data",
    "models",
    "evaluation",
    "engine",
    "tasks",
    "app",
    "benchmarks",
)


def imported_modules(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def upward_imports(package: Path = PACKAGE) -> set[str]:
    """'<file>: <module>' for every import of a higher layer's module (or of a module in no layer)."""
    found = set()
    for path in package.rglob("*.py"):
        if path.parent == package:  # mfvideo/__init__.py: checked on its own
            continue
        layer = LAYERS.index(path.relative_to(package).parts[0])
        for name in imported_modules(path):
            parts = name.split(".")
            if parts[0] != "mfvideo" or len(parts) == 1:
                continue
            if parts[1] not in LAYERS or LAYERS.index(parts[1]) > layer:
                found.add(f"{path.relative_to(package.parent)}: {name}")
    return found


def test_every_module_of_the_package_lives_in_a_declared_layer():
    top = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__" and p.name != "__init__.py")
    assert top == sorted(LAYERS)
    # The package root imports nothing at load time; `mfvideo.load` reaches the top layer only when called.
    root = ast.parse((PACKAGE / "__init__.py").read_text())
    assert not [node for node in root.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert set(imported_modules(PACKAGE / "__init__.py")) == {"mfvideo.app.inference"}


def test_no_module_imports_a_higher_layer():
    assert upward_imports() == set()


def test_an_upward_import_is_caught(tmp_path):
    """The guard itself: an engine module that imports the tasks (the shape of the old default factories) fails."""
    copy = tmp_path / "mfvideo"
    for layer in LAYERS:
        (copy / layer).mkdir(parents=True)
    (copy / "engine" / "trainer.py").write_text(
        "def default_model(recipe):\n    from mfvideo.tasks import build_model\n"
    )
    (copy / "data" / "loader.py").write_text("from mfvideo.models.mvit import ARCHS\n")
    (copy / "config" / "schema.py").write_text("import mfvideo.data.shardio\n")
    assert upward_imports(copy) == {
        "mfvideo/engine/trainer.py: mfvideo.tasks",
        "mfvideo/data/loader.py: mfvideo.models.mvit",
        "mfvideo/config/schema.py: mfvideo.data.shardio",
    }


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_importing_a_layer_loads_nothing_above_it(layer):
    modules = sorted(_module_name(p) for p in (PACKAGE / layer).rglob("*.py"))
    above = tuple(f"mfvideo.{name}" for name in LAYERS[LAYERS.index(layer) + 1 :])
    code = (
        "import sys, importlib\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.startswith({above!r})))"
    )
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


def test_modules_import_each_other_without_cycles():
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}
    cycles, state = [], {}

    def visit(name: str, stack: list[str]) -> None:
        state[name] = "open"
        stack.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert cycles == []

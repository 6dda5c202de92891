"""The flow runs one way: the data side never imports the model, engine or task side — not at the top of a module and
not inside a function — and importing it pulls none of them in."""

import ast
import subprocess
import sys

from launch_helpers import REPO, child_env

DATA_PACKAGE = REPO / "mfvideo" / "data"
FORBIDDEN = ("mfvideo.models", "mfvideo.engine", "mfvideo.tasks", "mfvideo.evaluation")


def imported_modules(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_no_data_module_imports_the_model_side_anywhere():
    offenders = {f"{path.relative_to(REPO)}: {name}" for path in DATA_PACKAGE.rglob("*.py")
                 for name in imported_modules(path) if name.startswith(FORBIDDEN)}
    assert not offenders


def test_importing_the_data_side_loads_no_model_code():
    modules = sorted("mfvideo." + ".".join(p.relative_to(REPO / "mfvideo").with_suffix("").parts)
                     for p in DATA_PACKAGE.rglob("*.py") if p.name != "__init__.py")
    code = ("import sys, importlib\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            f"print(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r})))")
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(), cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"

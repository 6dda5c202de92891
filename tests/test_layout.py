"""The flow runs one way: the data side never imports the model or engine side."""

import subprocess
import sys

from launch_helpers import REPO, child_env

DATA_MODULES = ["mfvideo.data.pipeline", "mfvideo.data.stream", "mfvideo.data.shards", "mfvideo.data.shards.cli",
                "mfvideo.benchmarks.data"]


def test_data_side_does_not_import_models_or_engine():
    code = ("import sys, importlib\n"
            f"for name in {DATA_MODULES!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('mfvideo.models', 'mfvideo.engine'))))")
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(), cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"

"""Write one benchmark's section of docs/benchmarks.md, leaving the other sections as they are."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

DEFAULT_REPORT = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
_HEADER = (
    "# Benchmarks\n\nEach section is rewritten by the command it names; figures are from one run on the machine it "
    "names.\n"
)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"
    try:
        import torch

        desc += f", torch {torch.__version__}"
        if torch.cuda.is_available():
            desc += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return desc


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def write_section(name: str, body: str, report: Path = DEFAULT_REPORT) -> None:
    """Replace (or append) the section delimited by markers for `name`."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=report.parent.parent
        ).stdout.strip()
    except OSError:
        commit = ""
    block = (
        f"<!-- {name}:begin -->\n## {name}\n\n"
        f"Command: `{command_line()}`  \nMachine: {machine_description()}"
        f"{'  ' + chr(10) + 'Commit: ' + commit if commit else ''}\n\n{body.strip()}\n<!-- {name}:end -->"
    )
    text = report.read_text() if report.exists() else _HEADER
    pattern = re.compile(rf"<!-- {re.escape(name)}:begin -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)

#!/usr/bin/env bash
# Fills gpu_wheels/ (git-ignored) with the wheels that tools/gpu_check.sh installs on a GPU machine without network.
# Run it here, where PyPI answers and ./.venv is set up (tools/dev.sh); carry gpu_wheels/ to the GPU machine.
#
# That machine's python3 (3.11, x86_64 Linux) already has a CUDA torch, einops, scikit-image and tensorboard, so the
# wheels are what mfvideo needs (pyproject.toml's dependencies and test extra, and what they require in turn, at the
# versions ./.venv has installed) less what those four bring, less ruff (lint only). Packages published only as source
# (deepspeed, pytorchvideo, fvcore, iopath) are built here as wheels, deepspeed with DS_BUILD_OPS=0 (no CUDA op
# compiled: the same build as tools/dev.sh installs); the others are downloaded for cp311 manylinux x86_64.
#
# The folder travels with the working tree, which carries 64 MiB in all. matplotlib, with what only it requires, is
# optional: it is added only when the total stays within MFVIDEO_WHEELS_BUDGET_MIB (default 60), and named at the end
# when it is left out. The engine draws loss.png with it at the end of every training run, so that machine needs it.
#
# Arguments are more requirement specifiers to fetch the same way (e.g. a torchcodec release for that machine's torch).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MFVIDEO_VENV:-.venv}
py="$venv/bin/python"
out=gpu_wheels
budget_mib=${MFVIDEO_WHEELS_BUDGET_MIB:-60}
[ -x "$py" ] || { echo "[gpu_wheels] needs $venv with mfvideo installed (tools/dev.sh sets it up)" >&2; exit 1; }

# One line per group: "<group> <name==version> ...". Versions are the ones installed in the venv.
groups=$("$py" - "$@" <<'EOF'
import re
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement

ON_GPU_MACHINE = ("torch", "einops", "scikit-image", "tensorboard")  # with everything they require
NOT_NEEDED = {"ruff"}  # the linter
OPTIONAL = ("matplotlib",)  # added in this order while the budget allows


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(name: str, extras: tuple = ()) -> list:
    try:
        declared = metadata.distribution(name).requires or []
    except metadata.PackageNotFoundError:
        return []
    wanted = []
    for line in declared:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras or ("",)):
            wanted.append(canonical(requirement.name))
    return wanted


def closure(roots, extras: tuple = ()) -> set:
    seen, todo = set(), [(canonical(root), extras) for root in roots]
    while todo:
        name, with_extras = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [(dep, ()) for dep in requirements(name, with_extras)]
    return seen


def pinned(name: str) -> str:
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name  # not installed here: the newest release


def declared_dependencies() -> list:
    """pyproject.toml's dependencies and test extra, as the checkout has them now (the venv's record of the editable
    install is as old as its last `pip install -e`)."""
    with open("pyproject.toml", "rb") as handle:
        project = tomllib.load(handle)["project"]
    lines = project["dependencies"] + project.get("optional-dependencies", {}).get("test", [])
    return [canonical(Requirement(line).name) for line in lines]


present = closure(ON_GPU_MACHINE)
mfvideo_deps = [dep for dep in declared_dependencies() if dep not in OPTIONAL]
required = closure(mfvideo_deps) - present - NOT_NEEDED
# setuptools ≥ 68 builds the editable mfvideo (pyproject's build-system): a new venv of Python 3.11 brings 65. The
# machine has typing-extensions and packaging (torch, scikit-image), but maybe older than pydantic and pytest want.
required |= {"setuptools", "typing-extensions", "packaging"}
print("required", *sorted(pinned(name) for name in required), *sys.argv[1:])
taken = required | present
for root in OPTIONAL:
    group = closure([root]) - taken - NOT_NEEDED
    taken |= group
    print(root, *sorted(pinned(name) for name in group))
EOF
)

platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 manylinux_2_5 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
pip_quiet=(-q --disable-pip-version-check --no-deps)

fetch() {  # fetch SPEC DIR: the cp311 manylinux wheel, else a wheel built here from the source release
  if ! "$py" -m pip download "${pip_quiet[@]}" --only-binary=:all: --python-version 3.11 --implementation cp \
    --abi cp311 --abi abi3 --abi none "${platforms[@]}" -d "$2" "$1" 2>/dev/null; then
    echo "[gpu_wheels] $1: no cp311 manylinux wheel, building one from its source release"
    DS_BUILD_OPS=0 "$py" -m pip wheel "${pip_quiet[@]}" --no-build-isolation -w "$2" "$1" 2>&1 \
      | grep -v "is ignored: it is neither a file nor a directory" || true
  fi
}

mib() { du -cm "$@" 2>/dev/null | tail -1 | cut -f1; }

rm -rf "$out" "$out.part"
mkdir -p "$out"
left_out=()
while read -r group specs; do
  mkdir -p "$out.part"
  for spec in $specs; do
    fetch "$spec" "$out.part"
  done
  if [ "$group" = required ]; then
    got=$(find "$out.part" -name '*.whl' | wc -l)
    wanted=$(wc -w <<<"$specs")
    if [ "$got" -ne "$wanted" ]; then
      echo "[gpu_wheels] $got wheels for the $wanted required packages ($specs): see the messages above" >&2
      exit 1
    fi
    if [ "$(mib "$out.part")" -gt "$budget_mib" ]; then
      echo "[gpu_wheels] the required wheels alone take $(mib "$out.part") MiB, over the $budget_mib MiB budget" >&2
    fi
  fi
  if [ "$group" = required ] || [ $(($(mib "$out") + $(mib "$out.part"))) -le "$budget_mib" ]; then
    mv "$out.part"/*.whl "$out"/ 2>/dev/null || true
  else
    left_out+=("$group ($(mib "$out.part") MiB: $specs)")
  fi
  rm -rf "$out.part"
done <<<"$groups"

echo "[gpu_wheels] $(find "$out" -name '*.whl' | wc -l) wheels in $out/:"
(cd "$out" && ls -1s --block-size=K *.whl | sed 's/^/  /')
bytes=$(du -cb "$out"/*.whl | tail -1 | cut -f1)
echo "[gpu_wheels] total $(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }') MiB (budget $budget_mib MiB;" \
  "the working tree carries 64 MiB in all)"
for group in "${left_out[@]}"; do
  echo "[gpu_wheels] left out to stay within the budget: $group"
done

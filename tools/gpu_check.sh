#!/usr/bin/env bash
# The one command for a GPU machine, meant to take at most 8 minutes on one H100 (not yet timed: no GPU has been at
# hand): an environment, the GPU tests, the GPU benchmark.
#
#   tools/gpu_check.sh [--skip-compile]    (--skip-compile: the benchmark leaves torch.compile out, minutes sooner)
#
# 1. Environment: ./.venv where it exists (tools/dev.sh made it). Otherwise ./.venv-gpu on top of the machine's
#    python3 (--system-site-packages: its CUDA torch, einops, scikit-image, tensorboard), the rest installed without
#    network from gpu_wheels/ (made by tools/gpu_wheels.sh where PyPI answers, carried here), and mfvideo editable.
# 2. `pytest -m gpu`: tests/test_gpu.py and every other test marked gpu, each skipped with its reason where it cannot
#    run.
# 3. `tools/benchmark.py gpu`: the GPU section of docs/benchmarks.md.
# Without CUDA it runs what the CPU can (step 2 shows the skips and their reasons), says the rest needs CUDA, and
# exits 0. It exits non-zero when the environment cannot be made, a test fails or the benchmark fails.
set -euo pipefail
cd "$(dirname "$0")/.."
benchmark_args=("$@")
say() { echo "[gpu_check] $*"; }

# What mfvideo, its tests and the engine import: a venv that imports these is ready.
imports="import deepspeed, omegaconf, av, decord, webdataset, torchdata, pytorchvideo, pytest, mfvideo"

gpu_seen=0
nvidia-smi -L >/dev/null 2>&1 && gpu_seen=1
venv_cuda=0
[ -x .venv/bin/python ] && .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  2>/dev/null && venv_cuda=1
# .venv when it can use this machine's GPU (or there is none): a CPU-torch .venv on a GPU machine would skip everything
if [ -x .venv/bin/python ] && { [ "$venv_cuda" = 1 ] || [ "$gpu_seen" = 0 ]; }; then
  py=.venv/bin/python
else
  py=.venv-gpu/bin/python
  if [ ! -x "$py" ]; then
    say "making .venv-gpu on $(command -v python3) ($(python3 --version 2>&1)), with its site-packages"
    python3 -m venv --system-site-packages .venv-gpu
  fi
  if ! "$py" -c "$imports" 2>/dev/null; then
    if ! compgen -G "gpu_wheels/*.whl" >/dev/null; then
      say "gpu_wheels/ holds no wheels: run tools/gpu_wheels.sh where PyPI answers and carry gpu_wheels/ here" >&2
      exit 1
    fi
    wheel_python=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    [ "$wheel_python" = 3.11 ] || say "python3 is $wheel_python; gpu_wheels/ holds wheels for 3.11" >&2
    say "installing gpu_wheels/ ($(du -sh gpu_wheels | cut -f1)) without network"
    pip=("$py" -m pip install -q --disable-pip-version-check --no-index --find-links gpu_wheels)
    # The wheels with their requirements resolved against the machine's packages; where a requirement would want
    # a version that only an index has, install the wheels as they are and let `pip check` name the mismatch.
    if ! "${pip[@]}" gpu_wheels/*.whl; then
      say "resolving against the machine's packages failed: installing the wheels without their requirements"
      "${pip[@]}" --no-deps gpu_wheels/*.whl
      "$py" -m pip check || true
    fi
    "$py" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-build-isolation -e .
  fi
fi
if ! "$py" -c "$imports" >/dev/null 2>&1; then
  "$py" -c "$imports" || true
  say "the environment does not import what mfvideo needs (above)" >&2
  exit 1
fi
"$py" -c "import matplotlib" 2>/dev/null \
  || say "matplotlib is missing (gpu_wheels/ could not hold it): every training run fails at its end, drawing loss.png"
say "python: $py, $("$py" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')"

has_cuda=0
"$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" && has_cuda=1
if [ "$gpu_seen" = 1 ] && [ "$has_cuda" = 0 ]; then
  say "nvidia-smi sees a GPU but $py's torch cannot use it: a CPU build of torch?" >&2
  exit 1
fi
if [ "$has_cuda" = 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/[gpu_check] GPU: /' || true
else
  say "no CUDA here: the GPU tests will show as skipped, with their reasons"
fi

# Both phases run whatever the other gives: a failing test must not cost the benchmark's figures, nor the reverse.
say "pytest -m gpu"
start=$SECONDS
tests_status=0
"$py" -m pytest -m gpu -ra -q tests || tests_status=$?
say "GPU tests took $((SECONDS - start)) s (exit $tests_status)"

if [ "$has_cuda" = 0 ]; then
  say "the GPU tests and tools/benchmark.py gpu need CUDA, which this machine does not have: nothing more to do"
  exit "$tests_status"
fi
start=$SECONDS
bench_status=0
"$py" tools/benchmark.py gpu "${benchmark_args[@]}" || bench_status=$?
say "benchmark took $((SECONDS - start)) s (exit $bench_status); docs/benchmarks.md's GPU section is rewritten"
[ "$tests_status" = 0 ] && [ "$bench_status" = 0 ]

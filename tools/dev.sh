#!/usr/bin/env bash
# The one command for a fresh clone: sets up ./.venv (idempotent, a no-op when nothing changed),
# then runs the tests (`tools/dev.sh test [pytest args]`), the demo (`tools/dev.sh demo [SEED]`) or the
# AVA-format detection demo (`tools/dev.sh demo-ava`).
#
# torch comes first so that nothing else pulls the multi-GB CUDA build: an importable torch
# (system or venv) is kept; with no GPU the CPU wheel torch==2.13.0 is installed; override
# with TORCH_SPEC (and TORCH_INDEX_URL for a wheel index). DeepSpeed is built with
# DS_BUILD_OPS=0 and without build isolation, so it compiles no CUDA op and sees our torch.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MFVIDEO_VENV:-.venv}
python=${PYTHON:-python3}
stamp="$venv/.mfvideo-setup"
want=$(cat pyproject.toml tools/dev.sh | sha256sum | cut -c1-16)

# data.decoder=torchcodec loads the system's FFmpeg (shared libraries, major version 4 to 9) and a torchcodec build made
# for the installed torch. FFmpeg comes from apt where this runs as root (Debian 12: FFmpeg 5.1); elsewhere it is
# reported and torchcodec's tests skip, saying why. PyPI's torchcodec builds from 0.14 on link CUDA's torch, so the
# CPU wheel torch==2.13.0 takes torchcodec 0.13.0 (its CPU build); another torch needs TORCHCODEC_SPEC (for CUDA,
# e.g. the build from PyTorch's own index for that torch and CUDA version).
torchcodec_setup() {
  if ! ldconfig -p 2>/dev/null | grep -q "libavcodec\.so\."; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "[dev] installing FFmpeg's shared libraries for torchcodec (apt-get install ffmpeg)"
      { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ffmpeg; } \
        >/dev/null || echo "[dev] apt-get could not install ffmpeg: data.decoder=torchcodec will not run here"
    else
      echo "[dev] no FFmpeg shared libraries and no root apt-get: install FFmpeg 4-9 for data.decoder=torchcodec"
    fi
  fi
  local torch_version spec=${TORCHCODEC_SPEC:-}
  torch_version=$("$venv/bin/python" -c "import torch; print(torch.__version__)")
  if [ -z "$spec" ]; then
    case "$torch_version" in
      2.13.0+cpu) spec=torchcodec==0.13.0 ;;
      *) echo "[dev] no torchcodec build known for torch $torch_version: set TORCHCODEC_SPEC to install one"; return 0 ;;
    esac
  fi
  "${pip[@]}" ${TORCHCODEC_INDEX_URL:+--index-url "$TORCHCODEC_INDEX_URL"} "$spec" \
    || echo "[dev] could not install $spec: data.decoder=torchcodec will not run here"
}

setup() {
  if [ ! -x "$venv/bin/python" ]; then
    if "$python" -c "import torch" 2>/dev/null; then
      echo "[dev] using the torch already installed for $python"
      "$python" -m venv --system-site-packages "$venv"
    else
      "$python" -m venv "$venv"
    fi
  fi
  local pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    local spec=${TORCH_SPEC:-}
    if [ -z "$spec" ]; then
      if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        spec=torch
      else
        spec=torch==2.13.0
      fi
    fi
    echo "[dev] installing $spec"
    "${pip[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$spec"
  fi
  "${pip[@]}" "setuptools>=68" wheel numpy
  echo "[dev] installing mfvideo and its dependencies"
  DS_BUILD_OPS=0 "${pip[@]}" --no-build-isolation -e ".[test]"
  torchcodec_setup
  echo "$want" >"$stamp"
}

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  setup 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] || { echo "[dev] set-up failed" >&2; exit 1; }
fi

cmd=${1:-test}
shift || true
case "$cmd" in
  test)
    # Lint and format first: a tree that ruff would change fails here, in seconds, before the suite's minutes.
    "$venv/bin/python" -m ruff check .
    "$venv/bin/python" -m ruff format --check .
    exec "$venv/bin/python" -m pytest "$@" ;;
  demo)
    # The paper's story on the CPU, `tools/dev.sh demo [SEED]` (default 0; results in outputs/demo/seed<SEED>):
    # shards of 1,200 unlabelled videos, their first 96 with labels (8 %) and 240 held-out test videos; MaskFeat
    # pretraining with its explained variance and k-NN probe in the log; the HOG picture; the same fine-tuning from
    # the MaskFeat weights and from scratch, each tested on the held-out videos; a summary. The seed is the
    # training seed (weights, masks, data order) of all three runs; the videos are the same for every seed. Every
    # step resumes: finished shards are kept and each training continues from its last checkpoint.
    seed=${1:-0}
    run=outputs/demo/seed$seed
    py="$venv/bin/python"
    shapes=(--shapes 2 --background flat --width 96 --height 96 --no-progress)
    "$py" tools/make_shards.py demo --out shards/demo/pretrain --num-videos 1200 --max-count 150 --seed 0 \
      --workers 2 "${shapes[@]}"
    "$py" tools/make_shards.py demo --out shards/demo/labelled --num-videos 96 --max-count 48 --seed 0 "${shapes[@]}"
    "$py" tools/make_shards.py demo --out shards/demo/test --num-videos 240 --max-count 60 --seed 1 "${shapes[@]}"
    "$py" tools/train.py recipes/demo_pt.yaml train.seed="$seed" train.output_dir="$run/pretrain"
    "$py" tools/hog_picture.py recipes/demo_pt.yaml model.init="$run/pretrain/model.pt" --out "$run/hog.png"
    for start in finetune scratch; do
      init="$run/pretrain/model.pt"
      [ "$start" = scratch ] && init=null
      "$py" tools/train.py recipes/demo_ft.yaml train.seed="$seed" model.init="$init" train.output_dir="$run/$start"
      "$py" tools/test.py recipes/demo_ft.yaml model.init="$run/$start/model.pt" train.output_dir="$run/$start"
    done
    "$py" tools/demo_report.py "$run"
    # What the fine-tuned model says about one held-out video, read from its file as a user's own would be.
    "$py" -c 'import sys, tarfile; tar = tarfile.open(sys.argv[1]); m = next(m for m in tar if m.name.endswith(".mp4"))
open(sys.argv[2], "wb").write(tar.extractfile(m).read())' shards/demo/test/test-000000.tar "$run/example.mp4"
    exec "$py" tools/predict.py "$run/finetune/model.pt" "$run/example.mp4" ;;
  demo-ava)
    # Action detection on the CPU: a procedural dataset laid out like AVA v2.2 (shards/demo_ava/ava: movies, CSVs,
    # label maps, excluded timestamps, person detections), its train and val shards made from those files the way
    # real AVA's are (shards/demo_ava/{train,val}), the detector trained on them (recipes/demo_ava_ft.yaml,
    # outputs/demo_ava), tested (tools/test.py: detections.csv and the mAP) and the written detections scored again
    # by the standalone evaluator, as one scores any AVA detections file. Every step resumes: the dataset is
    # rewritten to the same bytes, finished shards are kept and training continues from its last checkpoint
    # (delete outputs/demo_ava to train again from scratch).
    ava=shards/demo_ava/ava
    "$venv/bin/python" tools/make_shards.py demo-ava --out "$ava" --num-movies 90 --val-movies 30 --seconds 6 \
      --width 96 --height 72 --seed 0
    for split in train val; do
      "$venv/bin/python" tools/make_shards.py ava --action-list "$ava/ava_action_list_v2.2.pbtxt" \
        --movies "$ava/movies" --annotations "$ava/ava_${split}_v2.2.csv" \
        --excluded "$ava/ava_${split}_excluded_timestamps_v2.2.csv" \
        --detections "$ava/ava_${split}_predicted_boxes.csv" --max-count 24 --out "shards/demo_ava/$split"
    done
    "$venv/bin/python" tools/train.py recipes/demo_ava_ft.yaml
    "$venv/bin/python" tools/test.py recipes/demo_ava_ft.yaml model.init=outputs/demo_ava/model.pt
    "$venv/bin/python" tools/ava_eval.py --groundtruth "$ava/ava_val_v2.2.csv" \
      --detections outputs/demo_ava/test/detections.csv \
      --labelmap "$ava/ava_action_list_v2.2_for_activitynet_2019.pbtxt" \
      --exclusions "$ava/ava_val_excluded_timestamps_v2.2.csv"
    # The detector on one val movie of its own, with its person detections, drawn into outputs/demo_ava/render.mp4.
    exec "$venv/bin/python" tools/predict.py outputs/demo_ava/model.pt "$ava/movies/demo0_0060.mp4" \
      --boxes "$ava/ava_val_predicted_boxes.csv" --min-score 0.8 --render outputs/demo_ava/render.mp4 ;;
  setup) ;;
  *) echo "usage: tools/dev.sh {test [pytest args]|demo [SEED]|demo-ava|setup}" >&2; exit 2 ;;
esac

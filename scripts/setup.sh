#!/usr/bin/env bash
# Set up a fresh Debian machine (Python 3.11, no GPU): system packages, a venv in .venv with
# pinned torch/torchvision, and locomad installed editable with its test tools.
# GPU users: see README "GPU machines" — install the CUDA torch build that matches your driver.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v java >/dev/null || need+=(default-jre-headless)
command -v chromium >/dev/null || need+=(chromium)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v mkvpropedit >/dev/null || need+=(mkvtoolnix)  # the MKV 'text descriptions' flag
command -v npm >/dev/null || need+=(npm)  # axe-core for the review page's accessibility test
# OpenCV (PySceneDetect's decoder) needs these two shared libraries
ldconfig -p | grep -q 'libGL\.so\.1 ' || need+=(libgl1)
ldconfig -p | grep -q 'libglib-2\.0\.so\.0 ' || need+=(libglib2.0-0)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
# torch 2.14.1 + torchvision 0.29.1: the pair that imports with open_clip on the development
# machines (torch 2.13.0 has no torchvision that imports there; README "GPU machines").
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q -e '.[test]'
# axe-core (npm registry) for tests/test_review_browser.py's accessibility audit; the page
# itself needs no npm package and no build step
[ -f .venv/npm/node_modules/axe-core/axe.min.js ] || npm install -q --no-fund --no-audit --prefix .venv/npm axe-core@4 >/dev/null
echo "locomad set up in .venv ($(.venv/bin/locomad --version))"

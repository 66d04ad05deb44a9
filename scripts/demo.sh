#!/usr/bin/env bash
# The main job on the bundled example, from nothing: make a virtual environment with the core
# install only (no torch), convert fixtures/example/tiny_model.pt, then verify the output against
# its manifest and byte for byte against the checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e . 2> >(grep -v "^WARNING: Location" >&2)
OUT=${1:-demo-output}
.venv/bin/convert inspect fixtures/example/tiny_model.pt
.venv/bin/convert pth-to-safetensors fixtures/example/tiny_model.pt "$OUT" --overwrite
.venv/bin/convert verify "$OUT" --source fixtures/example/tiny_model.pt
echo "demo: done; see $OUT/model.safetensors and $OUT/manifest.json"

#!/usr/bin/env bash
# The whole test suite, from nothing: make the virtual environment, install the project with every
# extra and the test tools, regenerate nothing that is committed, and run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[all,test]" 2> >(grep -v "^WARNING: Location" >&2)
exec .venv/bin/python -m pytest "$@"

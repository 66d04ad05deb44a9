#!/usr/bin/env bash
# The whole test suite, from nothing: make the virtual environment, install the project with every
# extra and the test tools, regenerate nothing that is committed, lint and type-check, and run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[all,test]" 2> >(grep -v "^WARNING: Location" >&2)
# The ggml extra (llama-cpp-python) proves the GGUF K-quants byte for byte against ggml's C code. pip
# builds it from source once (about 10 minutes on 2 cores, more under load) and reuses the cached
# wheel; GGML_NATIVE=OFF keeps that wheel portable. A failed build only skips that tier, saying why.
CMAKE_ARGS="-DGGML_NATIVE=OFF" .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[ggml]" \
    2> >(grep -v "^WARNING: Location" >&2) || echo "test.sh: llama-cpp-python did not build; the ggml tier of tests/outputs/gguf/test_quants.py skips" >&2
# The Rust tests (tests/rust/; test_fixtures.py runs the crate's own `cargo test`) build rust/ offline against Debian's packaged crates.
crates="librust-serde-dev librust-serde-derive-dev librust-serde-json-dev librust-memmap2-dev librust-half-dev librust-sha2-dev librust-blake3-dev"
missing=""
for p in $crates; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -qq && apt-get install -y -qq $missing; } >/dev/null 2>&1 ||
            { echo "test.sh: apt-get install$missing failed" >&2; exit 1; }
    else
        echo "test.sh: the Rust tests need Debian's$missing (apt-get install as root)" >&2
    fi
fi
# The architecture's import contracts (pyproject.toml [tool.importlinter]): the core never imports a
# reader, a reader never imports a face.
.venv/bin/lint-imports --no-cache
# ruff (lint and format) and mypy, configured in pyproject.toml and pinned in the test extra: any finding
# fails the run.
.venv/bin/ruff check --quiet convert exporters tests scripts
.venv/bin/ruff format --check --quiet convert exporters tests scripts
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"

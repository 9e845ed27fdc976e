#!/usr/bin/env bash
# Builds rvllm's Python wheel (maturin, release) into target/wheels, installs it with the test
# requirements into a venv under target/, and runs the Python offline tests (vLLM's API and
# LangChain's VLLM class on the default model). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
CARGO_TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
VENV=$ROOT/target/python-venv
WHEELS=$ROOT/target/wheels

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r tests/python/requirements-python.txt

# The CLI, for the tests that compare its greedy output with the Python API's.
cargo build --release --bin rvllm
RVLLM_BIN=$CARGO_TARGET/release/rvllm
"$RVLLM_BIN" fetch >/dev/null

rm -f "$WHEELS"/rvllm-*.whl
"$VENV/bin/maturin" build --release -m crates/python/Cargo.toml -i "$VENV/bin/python" -o "$WHEELS"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$WHEELS"/rvllm-*.whl

cd tests/python
RVLLM_BIN=$RVLLM_BIN "$VENV/bin/python" -m pytest -q test_offline_*.py "$@"

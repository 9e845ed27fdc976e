#!/usr/bin/env bash
# Tests of `rvllm serve` with real clients (openai, langchain-openai, langchain-community):
# builds the release binary, fetches the default model if needed, installs the pinned clients
# into a venv under target/, and runs pytest on tests/python. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -p rvllm
export RVLLM_BIN="$target/release/rvllm"
"$RVLLM_BIN" fetch >/dev/null

venv=target/pyenv-server
req=tests/python/requirements-server.txt
mkdir -p target
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# Reinstall only when the pinned requirements change.
if ! cmp -s "$req" "$venv/.installed-requirements.txt"; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
    cp "$req" "$venv/.installed-requirements.txt"
fi
cd tests/python
exec "../../$venv/bin/python" -m pytest test_server.py -q -p no:cacheprovider "$@"

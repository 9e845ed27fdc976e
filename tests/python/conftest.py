"""Shared helpers for the rvllm Python tests (run by scripts/test-python-offline.sh)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def rvllm_bin():
    """The rvllm CLI: $RVLLM_BIN, else the release build in $CARGO_TARGET_DIR or target/."""
    env = os.environ.get("RVLLM_BIN")
    if env:
        return env
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    cand = target / "release" / "rvllm"
    if cand.is_file():
        return str(cand)
    return shutil.which("rvllm")


def run_python(code, env=None, cwd=None):
    """Runs `code` in a fresh interpreter of this venv; returns the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.pop("RVLLM_AS_VLLM", None)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def cli():
    path = rvllm_bin()
    if not path:
        pytest.fail("the rvllm CLI was not found: build it (cargo build --release --bin rvllm) "
                    "or set RVLLM_BIN")
    return path

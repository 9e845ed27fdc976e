"""Fixtures of tests/python/test_server.py: start `rvllm serve` on a free loopback port and stop
it afterwards.

Environment:
  RVLLM_BIN          the rvllm binary (default: $CARGO_TARGET_DIR/release/rvllm or target/release/rvllm)
  RVLLM_TEST_MODEL   the GGUF to serve (default: the cached SmolLM2-135M-Instruct; fetched if missing)
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
MAX_MODEL_LEN = 512


def rvllm_bin() -> str:
    if os.environ.get("RVLLM_BIN"):
        return os.environ["RVLLM_BIN"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return str(target / "release" / "rvllm")


def model_path() -> str:
    if os.environ.get("RVLLM_TEST_MODEL"):
        return os.environ["RVLLM_TEST_MODEL"]
    home = Path(os.environ.get("RVLLM_HOME", Path.home() / ".cache" / "rvllm"))
    path = home / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        out = subprocess.run([rvllm_bin(), "fetch"], check=True, capture_output=True, text=True)
        path = Path(out.stdout.strip())
    return str(path)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, extra_args=(), log_name="server"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = model_path()
        self.log_path = REPO / "target" / f"pytest-{log_name}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "wb")
        cmd = [
            rvllm_bin(), "serve", self.model,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--max-model-len", str(MAX_MODEL_LEN),
            "--kv-cache-memory", "0.25",
            *extra_args,
        ]
        env = dict(os.environ)
        env.pop("VLLM_API_KEY", None)
        self.terminated = False
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.wait_healthy()

    def wait_healthy(self, timeout=180.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rvllm serve exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"rvllm serve not healthy after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def metrics(self) -> dict:
        """Unlabelled view of /metrics: `name` -> value (the first sample of each name)."""
        text = requests.get(self.url + "/metrics", timeout=10).text
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            out.setdefault(name, float(value))
        return out

    def terminate(self):
        """SIGTERM, once (a second signal makes the server exit without draining)."""
        if not self.terminated and self.proc.poll() is None:
            self.terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout=60.0) -> int:
        self.terminate()
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def server():
    s = Server(log_name="main")
    yield s
    code = s.stop()
    assert code == 0, f"server exit code {code}:\n{s.logs()}"


@pytest.fixture(scope="session")
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=120)

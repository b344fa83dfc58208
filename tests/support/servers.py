"""Real servers for the tests: ``openpse serve`` as a subprocess on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

TEST_MASTER_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # base64 of 32 ASCII bytes
TEST_ADMIN_TOKEN = "operator-token-for-tests-0123456789"
STARTUP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def openpse_bin() -> str:
    return str(Path(sys.executable).with_name("openpse"))


@dataclass
class ServerProcess:
    database_url: str
    data_dir: Path
    log_file: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    args: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "OPENPSE_DATABASE_URL": self.database_url,
                "OPENPSE_DATA_DIR": str(self.data_dir),
                "OPENPSE_MASTER_KEY": TEST_MASTER_KEY,
                "OPENPSE_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
                "OPENPSE_ALLOW_LOCAL_WEBHOOKS": "1",
                "OPENPSE_LOG_FILE": str(self.log_file),
                "OPENPSE_WORKER_POLL_INTERVAL_S": "0.1",
            }
        )
        env.update(self.env_extra)
        return env

    def start(self) -> ServerProcess:
        self.port = self.port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [openpse_bin(), "serve", "--port", str(self.port), *self.args],
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=open(self.data_dir / f"stderr-{self.port}.log", "ab"),
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}: "
                    + (self.data_dir / f"stderr-{self.port}.log").read_text()[-3000:]
                )
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not become healthy in time")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def run_cli(
    args: list[str], env: dict[str, str], timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [openpse_bin(), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )

"""Start Lite Claw processes for tests: one service (`python -m services.<name>`) or the
whole system (`liteclaw up`), always as real subprocesses."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from liteclaw.localservers import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789"


def wait_ready(url: str, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            response = httpx.get(url + "/readyz", timeout=1)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


@dataclass
class ServiceProcess:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_service(
    name: str,
    *,
    nats_url: str,
    database_url: str,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
    wait: bool = True,
) -> ServiceProcess:
    port = free_port()
    log = log_dir / f"{name}-{port}.log"
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
        "LITECLAW_API_TOKEN": TOKEN,
        "SERVICE_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    service = ServiceProcess(name, proc, f"http://127.0.0.1:{port}", log)
    if wait:
        wait_ready(service.url, proc=proc)
    return service


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_base() -> int:
    """A base N whose ports N+1..N+5 are all free right now, chosen below Linux's ephemeral
    range (32768-60999): ports there are handed out to every outgoing connection and by
    ``free_port()``, so a base picked there can lose a port to one of them before the
    service binds it (seen as "address already in use" on a loaded machine)."""
    for _ in range(200):
        base = random.randrange(20000, 32700, 10)
        if all(_bindable(base + offset) for offset in range(1, 6)):
            return base
    raise RuntimeError("no free range of five ports found in 20001-32705")


@dataclass
class System:
    """`liteclaw up` running as a subprocess."""

    proc: subprocess.Popen[bytes]
    data_dir: Path
    output: Path

    @property
    def endpoints(self) -> dict:  # type: ignore[type-arg]
        return json.loads((self.data_dir / "endpoints.json").read_text())

    def url(self, service: str) -> str:
        return str(self.endpoints["services"][service]["url"])

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.endpoints['api_token']}"}


def start_system(
    data_dir: Path, extra_env: dict[str, str] | None = None, timeout: float = 120
) -> System:
    output = data_dir.parent / f"{data_dir.name}-up.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    for var in ("NATS_URL", "DATABASE_URL", "LITECLAW_API_TOKEN"):
        env.pop(var, None)
    port_base = free_port_base()
    with open(output, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "liteclaw",
                "up",
                "--data-dir",
                str(data_dir),
                "--port-base",
                str(port_base),
            ],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while not (data_dir / "endpoints.json").exists():
        if proc.poll() is not None:
            raise RuntimeError(f"liteclaw up exited with {proc.returncode}:\n{output.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"liteclaw up not ready after {timeout}s:\n{output.read_text()}")
        time.sleep(0.2)
    return System(proc, data_dir, output)

"""`liteclaw up`: the whole system on one machine, supervised.

Starts local NATS and PostgreSQL unless NATS_URL / DATABASE_URL are set, creates the
streams, runs each service as its own process on ports N+1..N+5, restarts a crashed one
with backoff, writes DIR/endpoints.json once every /readyz answers 200, and on Ctrl-C or
SIGTERM drains the services (they finish and ack in-flight work) before stopping the
servers it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from liteclaw.localservers import LocalNats, LocalPostgres
from shared.broker import ensure_streams

SERVICE_ORDER = ("auth", "claims", "heartbeat", "scheduler", "monitor")
MAX_BACKOFF_S = 30.0
STOP_TIMEOUT_S = 60.0


def say(text: str) -> None:
    print(text, flush=True)


@dataclass
class Child:
    name: str
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    backoff: float = 1.0
    started_at: float = 0.0
    next_start_at: float = 0.0
    log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _api_token(data_dir: Path) -> str:
    if os.environ.get("LITECLAW_API_TOKEN"):
        return os.environ["LITECLAW_API_TOKEN"]
    path = data_dir / "api_token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


class Supervisor:
    def __init__(self, data_dir: Path, port_base: int, ready_timeout: float) -> None:
        self.data_dir = data_dir.resolve()
        self.port_base = port_base
        self.ready_timeout = ready_timeout
        self.nats: LocalNats | None = None
        self.postgres: LocalPostgres | None = None
        self.children: list[Child] = []
        self.stopping = asyncio.Event()
        self.env: dict[str, str] = {}
        self.endpoints = self.data_dir / "endpoints.json"

    async def run(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.endpoints.unlink(missing_ok=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        try:
            await self._start_servers()
            if self.stopping.is_set():
                return 0
            self._spawn_all()
            if not await self._wait_ready():
                return 1
            self._write_endpoints()
            self._print_table()
            say("ready (Ctrl-C to drain and stop)")
            await self._supervise()
            return 0
        finally:
            await self._shutdown()
            self.endpoints.unlink(missing_ok=True)

    async def _start_servers(self) -> None:
        nats_url = os.environ.get("NATS_URL")
        database_url = os.environ.get("DATABASE_URL")
        if not nats_url:
            self.nats = LocalNats(self.data_dir / "nats")
            say(f"starting NATS (JetStream) on 127.0.0.1:{self.nats.port} ...")
            await asyncio.to_thread(self.nats.start)
            nats_url = self.nats.url
        if not database_url:
            self.postgres = LocalPostgres(self.data_dir / "postgres")
            say(f"starting PostgreSQL on 127.0.0.1:{self.postgres.port} ...")
            await asyncio.to_thread(self.postgres.start)
            database_url = self.postgres.url
        say("creating JetStream streams ...")
        await ensure_streams([u.strip() for u in nats_url.split(",")])
        self.env = {
            **os.environ,
            "NATS_URL": nats_url,
            "DATABASE_URL": database_url,
            "LITECLAW_API_TOKEN": _api_token(self.data_dir),
            "PYTHONUNBUFFERED": "1",
        }

    def _spawn_all(self) -> None:
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        for offset, name in enumerate(SERVICE_ORDER, start=1):
            child = Child(name, self.port_base + offset, logs / f"{name}.log")
            self.children.append(child)
            self._spawn(child)

    def _spawn(self, child: Child) -> None:
        if child.log is None:
            child.log = open(child.log_path, "ab")
        env = {
            **self.env,
            "SERVICE_PORT": str(child.port),
            "INSTANCE_ID": f"{child.name}-{os.uname().nodename}-{child.restarts}",
        }
        child.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{child.name}"],
            env=env,
            stdout=child.log,
            stderr=subprocess.STDOUT,
        )
        child.started_at = time.monotonic()

    async def _wait_ready(self) -> bool:
        say(f"starting {len(self.children)} services; waiting for /readyz ...")
        pending = {c.name for c in self.children}
        deadline = time.monotonic() + self.ready_timeout
        async with httpx.AsyncClient(timeout=1.0) as client:
            while pending and not self.stopping.is_set():
                for child in self.children:
                    if child.name not in pending:
                        continue
                    if child.proc is not None and child.proc.poll() is not None:
                        # Died before it was ready: schedule one restart with backoff.
                        self._restart_later(child)
                        child.proc = None
                    if child.proc is None:
                        if time.monotonic() >= child.next_start_at:
                            self._spawn(child)
                        continue
                    try:
                        response = await client.get(child.url + "/readyz")
                        if response.status_code == 200:
                            pending.discard(child.name)
                            say(f"  {child.name:<10} ready at {child.url}")
                    except httpx.HTTPError:
                        pass
                if time.monotonic() > deadline:
                    say(
                        f"not ready after {self.ready_timeout:.0f}s: {', '.join(sorted(pending))}; "
                        f"see {self.data_dir / 'logs'}"
                    )
                    return False
                await asyncio.sleep(0.2)
        return not pending

    def _restart_later(self, child: Child) -> None:
        if child.next_start_at > time.monotonic():
            return
        code = child.proc.returncode if child.proc else None
        # A child that ran a while before dying starts over with a short backoff.
        if time.monotonic() - child.started_at > 60:
            child.backoff = 1.0
        child.restarts += 1
        child.next_start_at = time.monotonic() + child.backoff
        say(
            f"  {child.name} exited with {code}; restart #{child.restarts} in {child.backoff:.0f}s "
            f"(log: {child.log_path})"
        )
        child.backoff = min(child.backoff * 2, MAX_BACKOFF_S)

    async def _supervise(self) -> None:
        while not self.stopping.is_set():
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None:
                    self._restart_later(child)
                    child.proc = None
                if child.proc is None and time.monotonic() >= child.next_start_at:
                    self._spawn(child)
                    assert child.proc is not None
                    say(f"  {child.name} started again (pid {child.proc.pid})")
                    # Keep the pids in endpoints.json true for operators and scripts.
                    self._write_endpoints()
            try:
                await asyncio.wait_for(self.stopping.wait(), timeout=0.5)
            except TimeoutError:
                pass

    def _write_endpoints(self) -> None:
        path = self.endpoints
        document = {
            "nats_url": self.env["NATS_URL"],
            "database_url": self.env["DATABASE_URL"],
            "api_token": self.env["LITECLAW_API_TOKEN"],
            "services": {
                c.name: {
                    "url": c.url,
                    "pid": c.proc.pid if c.proc else None,
                    "log": str(c.log_path),
                }
                for c in self.children
            },
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=2) + "\n")
        tmp.chmod(0o600)
        tmp.replace(path)  # readers never see a half-written file

    def _print_table(self) -> None:
        say("")
        say(f"{'component':<12}{'pid':>8}  {'address':<52}log")
        if self.nats:
            pid = self.nats.proc.pid if self.nats.proc else ""
            say(f"{'nats':<12}{pid:>8}  {self.nats.url:<52}{self.nats.log}")
        if self.postgres:
            pid = self.postgres.proc.pid if self.postgres.proc else ""
            say(f"{'postgres':<12}{pid:>8}  {self.postgres.url:<52}{self.postgres.log}")
        for c in self.children:
            say(f"{c.name:<12}{c.proc.pid if c.proc else '':>8}  {c.url:<52}{c.log_path}")
        say(f"\nendpoints and API token: {self.data_dir / 'endpoints.json'}")

    async def _shutdown(self) -> None:
        running = [c for c in self.children if c.proc and c.proc.poll() is None]
        if running:
            say(f"draining {len(running)} services ...")
        for c in running:
            assert c.proc is not None
            c.proc.terminate()
        # A service drains in at most about 3 x SHUTDOWN_GRACE (10 s) + 25 s.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for c in running:
            assert c.proc is not None
            # A child's exit is not an awaitable event here: poll it, bounded.
            while c.proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            if c.proc.poll() is None:
                say(f"  {c.name} did not stop in time; killing it")
                c.proc.kill()
                c.proc.wait()
        for c in self.children:
            if c.log:
                c.log.close()
        if self.postgres:
            say("stopping PostgreSQL ...")
            await asyncio.to_thread(self.postgres.stop)
        if self.nats:
            say("stopping NATS ...")
            await asyncio.to_thread(self.nats.stop)
        say("stopped")


def run_up(data_dir: Path, port_base: int, ready_timeout: float) -> int:
    return asyncio.run(Supervisor(data_dir, port_base, ready_timeout).run())

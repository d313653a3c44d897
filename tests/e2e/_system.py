"""Helpers for end-to-end tests: `liteclaw up` as a real subprocess, always cleaned up.

``liteclaw`` (the fixture) starts systems with ``start_system`` and, at teardown, even when
the test failed half-way, stops each one: SIGTERM to `liteclaw up` (it drains and stops
what it started), then SIGKILL to its process group, then any process still holding the
test's data directory (NATS and PostgreSQL run in sessions of their own, so the process
group does not reach them) is terminated and, if need be, killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

from tests.support.processes import System, start_system

T = TypeVar("T")

# Generous: the machine has 2 cores and other work runs beside the suite.
START_TIMEOUT = 180.0
STOP_TIMEOUT = 90.0  # above `liteclaw up`'s own 60 s before it kills a service


def wait_until(
    check: Callable[[], T | None], *, timeout: float, interval: float = 0.25, what: str
) -> T:
    """Poll ``check`` until it returns something truthy; TimeoutError after ``timeout`` s.
    Exceptions from ``check`` count as "not yet" (the last one is reported)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = check()
            if result:
                return result
            last = result
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not reached after {timeout}s (last: {last!r})")
        time.sleep(interval)


def _under(token: str, root: str) -> bool:
    return token == root or token.startswith(root + os.sep)


def processes_holding(data_dir: Path) -> list[psutil.Process]:
    """Every live process whose command line names ``data_dir`` (or a path under it), or
    whose stdout is a file under it (the services log to DIR/logs/<name>.log)."""
    root = str(data_dir.resolve())
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == me:
            continue
        try:
            cmdline = proc.info["cmdline"] or []
            if any(_under(arg, root) for arg in cmdline):
                found.append(proc)
                continue
            try:
                stdout = os.readlink(f"/proc/{proc.pid}/fd/1")
            except OSError:
                continue
            if _under(stdout, root):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def gone(proc: psutil.Process) -> bool:
    """True once the process has exited (a zombie waiting to be reaped has exited)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _terminate(procs: list[psutil.Process], timeout: float) -> None:
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(gone(p) for p in procs):
        time.sleep(0.2)
    for proc in procs:
        if not gone(proc):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def stop_system(system: System, timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM `liteclaw up` and wait (bounded) for it to exit; returns its exit code.
    Raises TimeoutError (after killing its group) if it does not exit in time."""
    proc = system.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise TimeoutError(
                f"liteclaw up did not exit within {timeout}s of SIGTERM:\n{tail(system.output)}"
            ) from None
    return proc.returncode


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


class Liteclaw:
    """Starts `liteclaw up` systems for one test and cleans every one of them up.

    Data directories live under a temp dir of their own, outside pytest's temp root:
    pytest resets that root to mode 0700 whenever any session starts, and PostgreSQL runs
    as another user when the suite runs as root, so a session starting beside this one
    would cut PostgreSQL off from its data mid-test."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="liteclaw-e2e-"))
        self.systems: list[System] = []
        self.data_dirs: set[Path] = set()
        self._seen: dict[int, psutil.Process] = {}

    def data_dir(self, name: str = "data") -> Path:
        """A data directory for `liteclaw up` (created by it); the same name, the same DIR."""
        return self.root / name

    def start(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> System:
        self.data_dirs.add(data_dir)
        system = start_system(data_dir, extra_env=extra_env, timeout=START_TIMEOUT)
        self.systems.append(system)
        self.remember(system)
        return system

    def remember(self, system: System) -> None:
        """Note every process the system runs now, to reap any of them left at teardown."""
        for proc in descendants(system.proc.pid):
            self._seen.setdefault(proc.pid, proc)

    def cleanup(self, keep_files: bool = False) -> None:
        for system in self.systems:
            if system.proc.poll() is None:
                self.remember(system)
                try:
                    stop_system(system)
                except TimeoutError:
                    pass  # its group was killed; leftovers are reaped below
        leftovers = [p for p in self._seen.values() if not gone(p)]
        for data_dir in self.data_dirs:
            leftovers += [p for p in processes_holding(data_dir) if p.pid not in self._seen]
        if leftovers:
            _terminate(leftovers, timeout=15)
        if not keep_files:
            shutil.rmtree(self.root, ignore_errors=True)


# --- the product's API, as a client sees it -----------------------------------------------

SERVICES = ("auth", "claims", "heartbeat", "scheduler", "monitor")
SENT_TOPIC = "services.heartbeat.domain:Delivery.Sent"


def create_heartbeat(
    http: httpx.Client,
    system: System,
    user_id: str,
    *,
    url: str,
    secret: str,
    cron: str = "*/2 * * * * *",
    timezone: str = "Europe/Berlin",
) -> dict[str, Any]:
    """PUT the user's profile, then POST a webhook heartbeat job; returns the job."""
    scheduler = system.url("scheduler")
    response = http.put(
        f"{scheduler}/v1/users/{user_id}/profile",
        json={"timezone": timezone},
        headers=system.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["timezone"] == timezone
    response = http.post(
        f"{scheduler}/v1/users/{user_id}/heartbeats",
        json={"schedule_cron": cron, "channel": {"type": "webhook", "url": url, "secret": secret}},
        headers=system.headers,
    )
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    assert job["schedule_cron"] == cron
    assert job["timezone"] == timezone
    assert "secret" not in job["channel"]
    return job


def deliveries(http: httpx.Client, system: System, job_id: str) -> dict[str, dict[str, Any]]:
    """GET the job's deliveries, keyed by slot key."""
    response = http.get(
        f"{system.url('heartbeat')}/v1/heartbeats/{job_id}/deliveries",
        params={"limit": 1000},
        headers=system.headers,
    )
    response.raise_for_status()
    return {item["slot_key"]: item for item in response.json()["items"]}


def log_problems(system: System, *services: str, limit: int = 15) -> str:
    """The last warning/error lines of the services' logs, for failure messages."""
    out = []
    for name in services:
        path = system.data_dir / "logs" / f"{name}.log"
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        bad = [
            line[:400]
            for line in lines
            if '"level": "warning"' in line or '"level": "error"' in line
        ]
        if bad:
            out.append(f"--- {path} ---\n" + "\n".join(bad[-limit:]))
    return "\n".join(out) or "(no warnings or errors in the service logs)"


def service_started_counts(http: httpx.Client, system: System) -> dict[str, int]:
    """ServiceStarted events per service, as the monitor counts them."""
    response = http.get(f"{system.url('monitor')}/v1/events/counts", headers=system.headers)
    response.raise_for_status()
    return {
        item["service"]: item["n"]
        for item in response.json()["items"]
        if item["type"] == "ServiceStarted"
    }


def wait_service_started(http: httpx.Client, system: System, at_least: int) -> dict[str, int]:
    """Wait until the monitor has counted ``at_least`` starts of every service."""

    def counted() -> dict[str, int] | None:
        counts = service_started_counts(http, system)
        return counts if all(counts.get(s, 0) >= at_least for s in SERVICES) else None

    return wait_until(counted, timeout=60, what=f"ServiceStarted x{at_least} at the monitor")

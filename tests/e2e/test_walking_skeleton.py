"""The walking skeleton, end to end: `liteclaw up` on a fresh directory runs all five
services; a heartbeat job every two seconds reaches a real webhook receiver, signed, once
per slot; SIGTERM stops every process it started; restarting on the same DIR keeps all
data and the deliveries go on."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import httpx
import psutil
import psycopg
import pytest

from services.heartbeat.domain import delivery_id
from tests.e2e._system import (
    SENT_TOPIC,
    SERVICES,
    STOP_TIMEOUT,
    Liteclaw,
    create_heartbeat,
    deliveries,
    descendants,
    gone,
    log_problems,
    processes_holding,
    tail,
    wait_service_started,
    wait_until,
)
from tests.support.processes import System
from tests.support.receivers import WebhookReceiver, WebhookRequest

pytestmark = pytest.mark.timeout(900)

DELIVERY_TIMEOUT = 60.0  # three slots two seconds apart, with room for a loaded machine


def _wait_deliveries(
    receiver: WebhookReceiver,
    system: System,
    predicate: Callable[[list[WebhookRequest]], bool],
    what: str,
) -> list[WebhookRequest]:
    try:
        return receiver.wait_for(predicate, timeout=DELIVERY_TIMEOUT)
    except TimeoutError as exc:
        raise AssertionError(
            f"{what}: {exc}\n{log_problems(system, 'scheduler', 'heartbeat')}"
        ) from None


def _distinct_accepted(requests: list[WebhookRequest]) -> dict[str, WebhookRequest]:
    """The first 2xx-answered request of each slot (webhook-id), in arrival order."""
    by_slot: dict[str, WebhookRequest] = {}
    for request in requests:
        if 200 <= request.status < 300 and request.webhook_id:
            by_slot.setdefault(request.webhook_id, request)
    return by_slot


def _check_delivery(request: WebhookRequest, job: dict[str, Any], user_id: str) -> None:
    assert request.verified, f"bad Standard Webhooks signature: {request.verify_error}"
    payload = request.payload
    assert request.webhook_id == payload["slot_key"], (request.headers, payload)
    assert payload["type"] == "heartbeat"
    assert payload["job_id"] == job["job_id"]
    assert payload["user_id"] == user_id
    assert payload["timezone"] == "Europe/Berlin"
    scheduled_for = datetime.fromisoformat(payload["scheduled_for"])
    assert scheduled_for.second % 2 == 0, f"*/2 seconds slot at {scheduled_for}"
    local = datetime.fromisoformat(payload["local_time"])
    offset = local.utcoffset()
    assert offset is not None and offset.total_seconds() in (3600, 7200), payload["local_time"]
    assert local == scheduled_for, (payload["local_time"], payload["scheduled_for"])


def _sent_events(database_url: str) -> list[tuple[UUID, dict[str, Any]]]:
    """Every stored ``Delivery.Sent`` event of the heartbeat service: (originator, state)."""
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                """SELECT table_name FROM information_schema.tables
                   WHERE table_schema = 'heartbeat' AND table_name LIKE '%\\_events'"""
            )
        ]
        assert tables == ["heartbeat_events"], f"heartbeat's stored events tables: {tables}"
        rows = conn.execute(
            "SELECT originator_id, state FROM heartbeat.heartbeat_events WHERE topic = %s",
            (SENT_TOPIC,),
        ).fetchall()
    return [(originator, json.loads(bytes(state))) for originator, state in rows]


def _assert_one_sent_event_per_slot(database_url: str, slot_keys: set[str]) -> None:
    events = _sent_events(database_url)
    per_slot = Counter(state["slot_key"] for _, state in events)
    doubled = {key: n for key, n in per_slot.items() if n > 1}
    assert not doubled, f"slots with more than one Delivery.Sent: {doubled}"
    missing = slot_keys - set(per_slot)
    assert not missing, f"delivered slots without a stored Delivery.Sent: {missing}"
    for originator, state in events:
        assert originator == delivery_id(state["slot_key"]), (originator, state)


def _wait_listed_as_sent(
    http: httpx.Client, system: System, job_id: str, slot_keys: set[str]
) -> dict[str, dict[str, Any]]:
    def listed() -> dict[str, dict[str, Any]] | None:
        items = deliveries(http, system, job_id)
        return items if slot_keys <= set(items) else None

    items = wait_until(listed, timeout=30, what=f"GET deliveries lists {sorted(slot_keys)}")
    for key in slot_keys:
        assert items[key]["outcome"] == "sent", items[key]
        assert items[key]["attempts"] >= 1, items[key]
    return items


def _everything_running(system: System) -> list[psutil.Process]:
    """Every process the system runs: the services (pids from endpoints.json), NATS and
    PostgreSQL (found by their command line naming the data dir) and all descendants of
    `liteclaw up` (PostgreSQL's backends among them)."""
    procs: dict[int, psutil.Process] = {}
    for name in SERVICES:
        pid = system.endpoints["services"][name]["pid"]
        assert isinstance(pid, int), (name, pid)
        try:
            procs[pid] = psutil.Process(pid)
        except psutil.NoSuchProcess:
            raise AssertionError(f"{name} (pid {pid} in endpoints.json) is not running") from None
    servers = [p for p in processes_holding(system.data_dir) if p.pid != system.proc.pid]
    names = " ".join(" ".join(p.cmdline()[:1]) for p in servers)
    assert "nats-server" in names, f"no nats-server holding {system.data_dir}: {names}"
    assert "postgres" in names, f"no postgres holding {system.data_dir}: {names}"
    for proc in [*servers, *descendants(system.proc.pid)]:
        procs.setdefault(proc.pid, proc)
    return list(procs.values())


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline()[:3])}"
    except psutil.Error:
        return f"{proc.pid} (gone)"


def _sigterm_and_check_all_exited(system: System) -> None:
    running = _everything_running(system)
    system.proc.send_signal(signal.SIGTERM)
    try:
        code = system.proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"liteclaw up still running {STOP_TIMEOUT}s after SIGTERM:\n{tail(system.output)}"
        ) from None
    assert code == 0, f"liteclaw up exited with {code}:\n{tail(system.output)}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not all(gone(p) for p in running):
        time.sleep(0.2)
    left = [_describe(p) for p in running if not gone(p)]
    assert not left, f"still running after liteclaw up exited: {left}"
    assert not processes_holding(system.data_dir), "processes still hold the data dir"
    assert not (system.data_dir / "endpoints.json").exists(), "stale endpoints.json left behind"


def test_walking_skeleton(
    liteclaw: Liteclaw, webhook_receiver: WebhookReceiver, http: httpx.Client
) -> None:
    user_id = "walker-1"

    # 1. `liteclaw up` on a fresh directory; start_system returns once endpoints.json exists.
    system = liteclaw.start(liteclaw.data_dir())
    endpoints = system.endpoints

    # 2. endpoints.json names NATS, PostgreSQL, the API token and all five services.
    assert endpoints["nats_url"].startswith("nats://")
    assert endpoints["database_url"].startswith("postgresql://")
    assert endpoints["api_token"]
    assert set(endpoints["services"]) == set(SERVICES)
    for name in SERVICES:
        assert endpoints["services"][name]["url"].startswith("http://127.0.0.1:")

    # 3. Every service answers /readyz with 200.
    for name in SERVICES:
        response = http.get(system.url(name) + "/readyz")
        assert response.status_code == 200, (name, response.text)

    # 4. Each service's ServiceStarted reached the monitor.
    wait_service_started(http, system, at_least=1)

    # 5. A profile in Europe/Berlin and a job every two seconds to the webhook receiver.
    job = create_heartbeat(
        http, system, user_id, url=webhook_receiver.url, secret=webhook_receiver.secret
    )

    # 6. At least three slots arrive, each signed and with webhook-id == slot_key.
    requests = _wait_deliveries(
        webhook_receiver,
        system,
        lambda rs: len(_distinct_accepted(rs)) >= 3,
        "three slots delivered",
    )
    received = _distinct_accepted(requests)
    for request in received.values():
        _check_delivery(request, job, user_id)
    slot_keys = set(received)

    # 7. GET deliveries lists every received slot with outcome `sent`.
    _wait_listed_as_sent(http, system, job["job_id"], slot_keys)

    # 8. The event store holds exactly one Delivery.Sent per slot, and no slot twice.
    _assert_one_sent_event_per_slot(endpoints["database_url"], slot_keys)

    # 9. SIGTERM: `liteclaw up` drains, exits 0, and every process it started has exited.
    _sigterm_and_check_all_exited(system)


def test_restart_on_same_dir_keeps_all_data(
    liteclaw: Liteclaw, webhook_receiver: WebhookReceiver, http: httpx.Client
) -> None:
    user_id = "walker-2"
    data_dir = liteclaw.data_dir()

    # 1. First run: a job, and a couple of its slots delivered.
    first = liteclaw.start(data_dir)
    token = first.endpoints["api_token"]
    job = create_heartbeat(
        http, first, user_id, url=webhook_receiver.url, secret=webhook_receiver.secret
    )
    _wait_deliveries(
        webhook_receiver,
        first,
        lambda rs: len(_distinct_accepted(rs)) >= 2,
        "two slots delivered before the restart",
    )
    wait_service_started(http, first, at_least=1)

    # 2. SIGTERM; everything the first run started is gone.
    _sigterm_and_check_all_exited(first)
    before = _distinct_accepted(webhook_receiver.requests)
    stopped_at = time.time()

    # 3. Second run on the same directory, with the same API token.
    second = liteclaw.start(data_dir)
    assert second.endpoints["api_token"] == token

    # 4. The job is still there.
    response = http.get(
        f"{second.url('scheduler')}/v1/users/{user_id}/heartbeats", headers=second.headers
    )
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [item["job_id"] for item in items] == [job["job_id"]], items
    assert items[0]["schedule_cron"] == "*/2 * * * * *"
    assert items[0]["timezone"] == "Europe/Berlin"

    # 5. The deliveries recorded by the first run are still listed as sent.
    _wait_listed_as_sent(http, second, job["job_id"], set(before))

    # 6. Deliveries go on: two more slots, not seen before the restart, arrive signed.
    requests = _wait_deliveries(
        webhook_receiver,
        second,
        lambda rs: (
            sum(
                1
                for key, r in _distinct_accepted(rs).items()
                if key not in before and r.received_at > stopped_at
            )
            >= 2
        ),
        "deliveries after restarting on the same DIR",
    )
    received = _distinct_accepted(requests)
    new = {key for key in received if key not in before}
    for key in new:
        _check_delivery(received[key], job, user_id)
    _wait_listed_as_sent(http, second, job["job_id"], set(received))

    # 7. Still exactly one Delivery.Sent per slot across both runs.
    _assert_one_sent_event_per_slot(second.endpoints["database_url"], set(received))

    # 8. The monitor kept the first run's ServiceStarted events and counted the second's.
    wait_service_started(http, second, at_least=2)

    # 9. SIGTERM again; everything stops.
    _sigterm_and_check_all_exited(second)

"""The relay publishes the scheduler's stored events to its JetStream stream, once each,
with ``Nats-Msg-Id`` = ``<aggregate id>:<version>``; an unchanged write stores and
publishes nothing, and JetStream drops a re-publish of the same id."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
from nats.js.client import JetStreamContext
from psycopg import sql

from liteclaw.localservers import LocalNats
from shared.relay import event_id_for
from tests.support.processes import TOKEN, ServiceProcess, start_service

AUTH = {"Authorization": f"Bearer {TOKEN}"}
STREAM = "LITECLAW_SCHEDULER"
PROFILE_UPDATED = "liteclaw.scheduler.profile_updated"
SERVICE_STARTED = "liteclaw.scheduler.service_started"
MSG_ID = re.compile(
    r"^(?P<id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}):(?P<version>\d+)$"
)
WAIT = 60.0
QUIET = 3.0  # several relay intervals (0.5 s) with nothing new


class Collector:
    """Every message of the stream, in order, from an ordered push consumer."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub
        self.msgs: list[Any] = []

    async def wait_for(self, subject: str, count: int, timeout: float = WAIT) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.msgs if m.subject == subject]
            if len(found) >= count:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{count} message(s) on {subject} not seen within {timeout}s; "
                    f"got {[m.subject for m in self.msgs]}"
                )
            try:
                self.msgs.append(await self.sub.next_msg(timeout=min(left, 1.0)))
            except nats.errors.TimeoutError:
                pass

    async def drain_quiet(self, quiet: float = QUIET) -> list[Any]:
        """Collect until nothing arrives for ``quiet`` seconds; return what arrived."""
        new: list[Any] = []
        while True:
            try:
                msg = await self.sub.next_msg(timeout=quiet)
            except nats.errors.TimeoutError:
                return new
            self.msgs.append(msg)
            new.append(msg)


def msg_id(msg: Any) -> tuple[str, int]:
    header = (msg.headers or {}).get("Nats-Msg-Id", "")
    match = MSG_ID.match(header)
    assert match, f"Nats-Msg-Id {header!r} is not <uuid>:<version>"
    return match["id"], int(match["version"])


def events_in_store(database_url: str) -> int:
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'scheduler' AND table_name LIKE '%%events'"
            ).fetchall()
        ]
        assert len(tables) == 1, tables
        query = sql.SQL("SELECT count(*) FROM scheduler.{}").format(sql.Identifier(tables[0]))
        row = conn.execute(query).fetchone()
        assert row is not None
        return int(row[0])


async def put_profile(url: str, user: str, timezone: str, enabled: bool = True) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.put(
            f"{url}/v1/users/{user}/profile",
            json={"timezone": timezone, "heartbeats_enabled": enabled},
            headers=AUTH,
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["user_id"], body["timezone"], body["heartbeats_enabled"]) == (
        user,
        timezone,
        enabled,
    )


async def stream_count(js: JetStreamContext) -> int:
    return int((await js.stream_info(STREAM)).state.messages)


async def test_relay_publishes_each_event_once(
    nats_server: LocalNats, database_url: str, log_dir: Path
) -> None:
    service: ServiceProcess = await asyncio.to_thread(
        start_service,
        "scheduler",
        nats_url=nats_server.url,
        database_url=database_url,
        log_dir=log_dir,
    )
    second: ServiceProcess | None = None
    nc = await nats.connect(nats_server.url, connect_timeout=10)
    try:
        js = nc.jetstream()
        sub = await js.subscribe("liteclaw.scheduler.>", stream=STREAM, ordered_consumer=True)
        got = Collector(sub)

        # -- the service's own start ------------------------------------------------------
        [started] = await got.wait_for(SERVICE_STARTED, 1)
        started_id, started_version = msg_id(started)
        assert started_version == 1
        payload = json.loads(started.data)
        assert payload["type"] == "ServiceStarted"
        assert payload["service"] == "scheduler"
        assert payload["pid"] == service.proc.pid

        # -- a new profile ------------------------------------------------------------------
        user = f"relay-{uuid.uuid4().hex[:8]}"
        await put_profile(service.url, user, "Europe/Berlin")
        [first] = await got.wait_for(PROFILE_UPDATED, 1)
        profile_uuid, version = msg_id(first)
        assert version == 1
        assert profile_uuid != started_id
        payload = json.loads(first.data)
        assert payload["type"] == "ProfileUpdated"
        # event_id is derived from the stored event (the same on any re-publish).
        assert payload["event_id"] == str(event_id_for(f"{profile_uuid}:1"))
        assert payload["user_id"] == user
        assert payload["timezone"] == "Europe/Berlin"
        assert payload["heartbeats_enabled"] is True
        assert (first.headers or {}).get("content-type") == "application/json"
        stored = events_in_store(database_url)
        assert await got.drain_quiet() == []
        in_stream = await stream_count(js)

        # -- the same profile again: nothing stored, nothing published -------------------
        await put_profile(service.url, user, "Europe/Berlin")
        assert events_in_store(database_url) == stored
        assert await got.drain_quiet() == []
        assert await stream_count(js) == in_stream

        # -- a change: a second ProfileUpdated, version 2 of the same aggregate ----------
        await put_profile(service.url, user, "America/New_York")
        assert events_in_store(database_url) == stored + 1
        updates = await got.wait_for(PROFILE_UPDATED, 2)
        assert msg_id(updates[1]) == (profile_uuid, 2)
        assert json.loads(updates[1].data)["timezone"] == "America/New_York"
        assert json.loads(updates[1].data)["event_id"] == str(event_id_for(f"{profile_uuid}:2"))
        assert await got.drain_quiet() == []
        in_stream = await stream_count(js)

        # -- JetStream drops a re-publish of the same msg id ------------------------------
        ack = await js.publish(
            PROFILE_UPDATED,
            updates[1].data,
            stream=STREAM,
            headers={"Nats-Msg-Id": f"{profile_uuid}:2"},
            timeout=10,
        )
        assert ack.duplicate is True
        assert await stream_count(js) == in_stream
        assert await got.drain_quiet() == []

        # -- a restart publishes its own ServiceStarted and re-publishes nothing ----------
        # uvicorn re-raises the SIGTERM it handled, so -15 is a clean exit too.
        assert await asyncio.to_thread(service.stop) in (0, -15)
        assert '"service stopped"' in service.log.read_text()
        second = await asyncio.to_thread(
            start_service,
            "scheduler",
            nats_url=nats_server.url,
            database_url=database_url,
            log_dir=log_dir,
        )
        starts = await got.wait_for(SERVICE_STARTED, 2)
        restart_id, restart_version = msg_id(starts[1])
        assert restart_version == 1
        assert restart_id != started_id
        assert json.loads(starts[1].data)["pid"] == second.proc.pid
        await got.drain_quiet()
        assert [msg_id(m) for m in got.msgs if m.subject == PROFILE_UPDATED] == [
            (profile_uuid, 1),
            (profile_uuid, 2),
        ]
        assert len(got.msgs) == 4  # 2 x ServiceStarted, 2 x ProfileUpdated
        await sub.unsubscribe()
    finally:
        await nc.close()
        await asyncio.to_thread(service.stop)
        if second is not None:
            await asyncio.to_thread(second.stop)

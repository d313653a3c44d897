"""Local time under real parts: DST changes in New York, London and Lord Howe in both
directions, and a timezone change in the middle of a day.

DST: the jobs are registered through the real scheduler API, the real due-index
projection keeps their rows, and the scheduler's own ``Ticker`` fires them on a simulated
clock (the next changes are in 2027) into the real JetStream stream, from which the test
reads every ``SlotDue``. The scheduler process runs with ``HEARTBEAT_JOB_TYPE=checkin``,
so only the test's ticker fires these ``heartbeat`` jobs.

Timezone change: real time, real scheduler and heartbeat processes, a real webhook
receiver. The zones are fixed-offset IANA zones (``Etc/GMT-N``) chosen from the current
time, so the test does not depend on when it runs.

Expected instants (2027), from the zones' real offsets:

* Europe/London: 28 March 01:00 GMT -> 02:00 BST; 31 October 02:00 BST -> 01:00 GMT.
* America/New_York: 14 March 02:00 EST -> 03:00 EDT; 7 November 02:00 EDT -> 01:00 EST.
* Australia/Lord_Howe: 4 April 02:00 +11:00 -> 01:30 +10:30; 3 October 02:00 +10:30 ->
  02:30 +11:00.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import nats
import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from liteclaw.localservers import LocalNats, LocalPostgres
from services.scheduler.due_index import Ticker
from shared.broker import make_broker
from tests.support.processes import TOKEN, ServiceProcess, start_service
from tests.support.receivers import WebhookReceiver

pytestmark = pytest.mark.timeout(300)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SLOT_DUE = "liteclaw.scheduler.slot_due"
STREAM = "LITECLAW_SCHEDULER"


def _database(pg: LocalPostgres) -> str:
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:{pg.port}/{name}"


def _wait(fn: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.2)


@dataclass
class Env:
    nats_url: str
    database_url: str
    scheduler: ServiceProcess
    api: httpx.Client


@pytest.fixture(scope="module")
def dst_env(pg_server: LocalPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base: Path = tmp_path_factory.mktemp("dst")
    server = LocalNats(base / "nats")
    server.start()
    database_url = _database(pg_server)
    scheduler = None
    try:
        scheduler = start_service(
            "scheduler",
            nats_url=server.url,
            database_url=database_url,
            log_dir=base,
            extra_env={"HEARTBEAT_JOB_TYPE": "checkin"},
        )
        with httpx.Client(base_url=scheduler.url, headers=AUTH, timeout=30) as api:
            yield Env(server.url, database_url, scheduler, api)
    finally:
        if scheduler is not None:
            scheduler.stop()
        server.stop()


def _register(env: Env, zone: str, crons: list[str]) -> dict[str, str]:
    """Create one job per cron for a new user in ``zone``; returns cron -> job id."""
    user = f"dst-{uuid.uuid4().hex[:8]}"
    response = env.api.put(f"/v1/users/{user}/profile", json={"timezone": zone})
    assert response.status_code == 200, response.text
    jobs = {}
    for cron in crons:
        response = env.api.post(
            f"/v1/users/{user}/heartbeats",
            json={
                "schedule_cron": cron,
                "channel": {
                    "type": "webhook",
                    "url": "http://127.0.0.1:9/",
                    "secret": "whsec_ZHN0LXRlc3Qtc2VjcmV0LTAxMjM0NTY3ODk=",
                },
            },
        )
        assert response.status_code == 201, response.text
        jobs[cron] = response.json()["job_id"]
    return jobs


async def _fire_until(env: Env, job_ids: list[str], until: datetime) -> list[dict[str, Any]]:
    """Drive the scheduler's ticker on a simulated clock: jump to each job's next due
    instant and tick, until ``until``; return the SlotDue events it published."""
    pool = await asyncpg.create_pool(
        env.database_url, min_size=1, max_size=2, server_settings={"search_path": "scheduler"}
    )
    broker = make_broker(
        [env.nats_url],
        service="dst-test",
        tracer_provider=TracerProvider(),
        registry=CollectorRegistry(),
    )
    await broker.connect()

    async def no_missed(records: list[Any]) -> int:
        raise AssertionError(f"nothing may be missed on a simulated clock: {records}")

    ticker = Ticker(
        pool=pool,
        broker=broker,
        job_types=["heartbeat"],
        batch=100,
        max_sleep=1.0,
        misfire_grace=timedelta(minutes=15),
        stagger_max=0.0,
        record_missed=no_missed,
        registry=CollectorRegistry(),
    )
    ids = [uuid.UUID(j) for j in job_ids]
    # Another test's jobs have slots on this clock too: this ticker sees only its own.
    others = await pool.fetch(
        "SELECT job_id FROM jobs WHERE next_fire_at IS NOT NULL AND NOT job_id = ANY($1::uuid[])",
        ids,
    )
    for row in others:
        assert env.api.delete(f"/v1/heartbeats/{row['job_id']}").status_code == 204
    await _wait_async(
        lambda: pool.fetchval(
            "SELECT count(*) = 0 FROM jobs WHERE next_fire_at IS NOT NULL "
            "AND NOT job_id = ANY($1::uuid[])",
            ids,
        ),
        "other tests' jobs deleted from the due index",
    )
    try:
        while True:
            due = await pool.fetchval(
                "SELECT min(next_fire_at) FROM jobs WHERE job_id = ANY($1::uuid[])", ids
            )
            if due is None or due > until:
                break
            await ticker.tick(now=due)
    finally:
        await broker.stop()
        await pool.close()
    return await _published(env.nats_url, set(job_ids))


async def _wait_async(fn: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await fn():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.1)


async def _published(url: str, job_ids: set[str]) -> list[dict[str, Any]]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM, subjects_filter=SLOT_DUE)
        total = (info.state.subjects or {}).get(SLOT_DUE, 0)
        out = []
        sub = await js.subscribe(SLOT_DUE, stream=STREAM, ordered_consumer=True)
        for _ in range(total):
            msg = await sub.next_msg(timeout=10)
            event = json.loads(msg.data)
            if event["job_id"] in job_ids:
                out.append(event)
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def _local_times(events: list[dict[str, Any]], job_id: str, day: str) -> list[str]:
    return [
        e["local_time"] for e in events if e["job_id"] == job_id and e["local_time"][:10] == day
    ]


# (zone, cron, the transition day, the slots expected on that local day)
FIXED_TIME_CASES = [
    # London spring forward: 01:30 does not exist; it fires once at 02:00 BST.
    ("Europe/London", "30 1 25-31 3 *", "2027-03-28", ["2027-03-28T02:00:00+01:00"]),
    # London fall back: 01:30 happens twice; it fires once, at the first (BST).
    ("Europe/London", "30 1 25-31 10 *", "2027-10-31", ["2027-10-31T01:30:00+01:00"]),
    # New York spring forward: 02:30 does not exist; it fires at 03:00 EDT.
    ("America/New_York", "30 2 10-16 3 *", "2027-03-14", ["2027-03-14T03:00:00-04:00"]),
    # New York fall back: 01:30 twice; once, at EDT.
    ("America/New_York", "30 1 4-10 11 *", "2027-11-07", ["2027-11-07T01:30:00-04:00"]),
    # Lord Howe fall back (half an hour): 01:45 twice; once, at +11:00.
    ("Australia/Lord_Howe", "45 1 1-7 4 *", "2027-04-04", ["2027-04-04T01:45:00+11:00"]),
    # Lord Howe spring forward: 02:00-02:30 does not exist; 02:15 fires at 02:30 +11:00.
    ("Australia/Lord_Howe", "15 2 1-7 10 *", "2027-10-03", ["2027-10-03T02:30:00+11:00"]),
]


@pytest.mark.parametrize(("zone", "cron", "day", "expected"), FIXED_TIME_CASES)
def test_fixed_time_schedule_fires_once_per_local_occurrence_across_dst(
    dst_env: Env, zone: str, cron: str, day: str, expected: list[str]
) -> None:
    job_id = _register(dst_env, zone, [cron])[cron]
    until = datetime.fromisoformat(day).replace(tzinfo=ZoneInfo(zone)) + timedelta(days=3)
    events = asyncio.run(_fire_until(dst_env, [job_id], until.astimezone(UTC)))
    assert _local_times(events, job_id, day) == expected
    # One slot per local day around the change, never two, and slot keys name the slot.
    days = [e["local_time"][:10] for e in events]
    assert len(days) == len(set(days)), days
    for event in events:
        assert event["slot_key"] == f"{job_id}:v1:{event['local_time']}"
        assert datetime.fromisoformat(event["scheduled_for"]) == datetime.fromisoformat(
            event["local_time"]
        )


# (zone, cron, the transition day, slots on that local day: elapsed real time)
ELAPSED_CASES = [
    # A 25-hour day: every half hour of real time, so 01:00 and 01:30 fire in both passes.
    ("Europe/London", "*/30 * 31 10 *", "2027-10-31", 50),
    ("America/New_York", "*/30 * 7 11 *", "2027-11-07", 50),
    # A 23-hour day: the gap's half-hours simply do not happen.
    ("Europe/London", "*/30 * 28 3 *", "2027-03-28", 46),
    # Lord Howe's 23.5-hour spring day and 24.5-hour autumn day.
    ("Australia/Lord_Howe", "*/30 * 3 10 *", "2027-10-03", 47),
    ("Australia/Lord_Howe", "*/30 * 4 4 *", "2027-04-04", 49),
]


@pytest.mark.parametrize(("zone", "cron", "day", "count"), ELAPSED_CASES)
def test_wildcard_hour_schedule_follows_elapsed_time_across_dst(
    dst_env: Env, zone: str, cron: str, day: str, count: int
) -> None:
    job_id = _register(dst_env, zone, [cron])[cron]
    until = datetime.fromisoformat(day).replace(tzinfo=ZoneInfo(zone)) + timedelta(days=2)
    events = asyncio.run(_fire_until(dst_env, [job_id], until.astimezone(UTC)))
    on_day = [e for e in events if e["local_time"][:10] == day]
    instants = [datetime.fromisoformat(e["scheduled_for"]) for e in on_day]
    assert len(on_day) == count, [e["local_time"] for e in on_day]
    assert len({e["slot_key"] for e in on_day}) == count
    # Exactly thirty minutes of real time apart, whatever the wall clock does.
    assert all(b - a == timedelta(minutes=30) for a, b in itertools.pairwise(instants))


# --- a timezone change in the middle of a day --------------------------------------------


@dataclass
class LiveEnv:
    scheduler: ServiceProcess
    heartbeat: ServiceProcess
    api: httpx.Client
    deliveries: httpx.Client


@pytest.fixture(scope="module")
def live(pg_server: LocalPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveEnv]:
    base: Path = tmp_path_factory.mktemp("zone_change")
    server = LocalNats(base / "nats")
    server.start()
    database_url = _database(pg_server)
    started: list[ServiceProcess] = []
    try:
        for name in ("scheduler", "heartbeat"):
            started.append(
                start_service(name, nats_url=server.url, database_url=database_url, log_dir=base)
            )
        with (
            httpx.Client(base_url=started[0].url, headers=AUTH, timeout=30) as api,
            httpx.Client(base_url=started[1].url, headers=AUTH, timeout=30) as hb,
        ):
            yield LiveEnv(started[0], started[1], api, hb)
    finally:
        for service in started:
            service.stop()
        server.stop()


def _fixed_zone(offset_hours: int) -> str:
    # IANA's Etc zones are named with the POSIX sign: Etc/GMT-2 is UTC+02:00.
    if offset_hours == 0:
        return "Etc/UTC"
    return f"Etc/GMT{'-' if offset_hours > 0 else '+'}{abs(offset_hours)}"


def _midday_offset(now: datetime) -> int:
    """A UTC offset at which it is about midday now, so a few hours either way stay on
    the same local date."""
    return max(-10, min(12, 12 - now.hour))


def _cron_at(local: datetime) -> str:
    return f"{local.second} {local.minute} {local.hour} * * *"


def _job(env: LiveEnv, user: str, cron: str, receiver: WebhookReceiver) -> dict[str, Any]:
    channel = {"type": "webhook", "url": receiver.url, "secret": receiver.secret}
    response = env.api.post(
        f"/v1/users/{user}/heartbeats", json={"schedule_cron": cron, "channel": channel}
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def _listed(env: LiveEnv, user: str, job_id: str) -> dict[str, Any]:
    items = env.api.get(f"/v1/users/{user}/heartbeats").json()["items"]
    return next(i for i in items if i["job_id"] == job_id)


def test_moving_west_after_the_days_heartbeat_does_not_repeat_it(live: LiveEnv) -> None:
    now = datetime.now(UTC)
    offset = _midday_offset(now)
    east, west = _fixed_zone(offset), _fixed_zone(offset - 2)
    user = f"west-{uuid.uuid4().hex[:8]}"
    assert live.api.put(f"/v1/users/{user}/profile", json={"timezone": east}).status_code == 200
    with WebhookReceiver() as receiver:
        fire = (now + timedelta(seconds=4)).astimezone(ZoneInfo(east))
        job = _job(live, user, _cron_at(fire), receiver)
        receiver.wait_for(lambda rs: len(rs) >= 1, 45)
        assert receiver.requests[0].payload["local_time"] == fire.replace(microsecond=0).isoformat()

        # Two hours west the same wall time is still ahead today: it must not come again.
        assert live.api.put(f"/v1/users/{user}/profile", json={"timezone": west}).status_code == 200
        listed = _listed(live, user, job["job_id"])
        tomorrow = (fire.replace(microsecond=0, tzinfo=None) + timedelta(days=1)).replace(
            tzinfo=ZoneInfo(west)
        )
        assert listed["next_fire_local"] == tomorrow.isoformat(), listed
        time.sleep(3)
        assert len(receiver.requests) == 1, [r.payload for r in receiver.requests]


def test_moving_east_before_the_days_heartbeat_does_not_lose_it(live: LiveEnv) -> None:
    now = datetime.now(UTC)
    offset = _midday_offset(now)
    west, east = _fixed_zone(offset - 1), _fixed_zone(offset + 1)
    user = f"east-{uuid.uuid4().hex[:8]}"
    assert live.api.put(f"/v1/users/{user}/profile", json={"timezone": west}).status_code == 200
    with WebhookReceiver() as receiver:
        # Due in an hour in the west; two hours east that wall time passed an hour ago.
        fire = (now + timedelta(hours=1)).astimezone(ZoneInfo(west)).replace(microsecond=0)
        job = _job(live, user, _cron_at(fire), receiver)
        assert job["next_fire_local"] == fire.isoformat(), job

        assert live.api.put(f"/v1/users/{user}/profile", json={"timezone": east}).status_code == 200
        receiver.wait_for(lambda rs: len(rs) >= 1, 45)
        caught_up = fire.replace(tzinfo=None).replace(tzinfo=ZoneInfo(east))
        payload = receiver.requests[0].payload
        assert payload["local_time"] == caught_up.isoformat(), payload
        assert receiver.requests[0].webhook_id == f"{job['job_id']}:v1:{caught_up.isoformat()}"

        # Recorded once, and the next one is tomorrow at the same wall time in the east.
        items = _wait(
            lambda: (
                live.deliveries.get(f"/v1/heartbeats/{job['job_id']}/deliveries")
                .json()
                .get("items")
            ),
            30,
            "the caught-up delivery recorded",
        )
        assert [i["outcome"] for i in items] == ["sent"], items
        listed = _listed(live, user, job["job_id"])
        assert listed["next_fire_local"] == (caught_up + timedelta(days=1)).isoformat(), listed
        time.sleep(2)
        assert len(receiver.requests) == 1, [r.payload for r in receiver.requests]

"""Scheduler semantics over real NATS JetStream and PostgreSQL: schedule and zone changes
move future slots only, the upcoming API and `liteclaw heartbeats preview` agree across a
DST change, the misfire policy after an outage, the one-shot `liteclaw heartbeat run`, and
two scheduler instances firing every slot exactly once.

The module shares one NATS, one database and one heartbeat process; each test starts
the scheduler instances it needs (they start in about a second), uses its own user and
webhook receiver, and deletes its jobs before its schedulers stop, so no test's jobs fire
into the next one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
import nats
import psycopg
import pytest

from liteclaw.localservers import LocalNats, LocalPostgres
from services.scheduler.due_index import stagger
from tests.support.processes import ROOT, TOKEN, ServiceProcess, start_service
from tests.support.receivers import WebhookReceiver

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SCHEDULER_STREAM = "LITECLAW_SCHEDULER"
SLOTS_MISSED = "liteclaw.scheduler.slots_missed"
WAIT = 45.0
SECOND = timedelta(seconds=1)

T = TypeVar("T")


# --- helpers ------------------------------------------------------------------------------


def wait_until(fn: Callable[[], T | None], timeout: float, what: str, every: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
        time.sleep(every)


def log_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def emitted(service: ServiceProcess, job_id: str) -> list[dict[str, Any]]:
    """The scheduler's `slot due` log lines (one per SlotDue published) for a job."""
    return [
        line
        for line in log_lines(service.log)
        if line.get("decision") == "slot_due" and line.get("job_id") == job_id
    ]


async def _messages(url: str, stream: str, subject: str) -> list[dict[str, Any]]:
    nc = await nats.connect(url, connect_timeout=10)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream, subjects_filter=subject)
        total = (info.state.subjects or {}).get(subject, 0)
        out: list[dict[str, Any]] = []
        if not total:
            return out
        sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
        while len(out) < total:
            msg = await sub.next_msg(timeout=10)
            out.append(json.loads(msg.data))
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def slots_missed(url: str, job_id: str) -> list[dict[str, Any]]:
    events = asyncio.run(_messages(url, SCHEDULER_STREAM, SLOTS_MISSED))
    return [e for e in events if e["job_id"] == job_id]


def webhook_channel(receiver: WebhookReceiver) -> dict[str, str]:
    return {"type": "webhook", "url": receiver.url, "secret": receiver.secret}


def scheduled(request: Any) -> datetime:
    return datetime.fromisoformat(request.payload["scheduled_for"])


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def user_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Api:
    def __init__(self, scheduler_url: str, heartbeat_url: str, jobs: list[str]) -> None:
        self.sched = httpx.Client(base_url=scheduler_url, headers=AUTH, timeout=30)
        self.hb = httpx.Client(base_url=heartbeat_url, headers=AUTH, timeout=30)
        self.jobs = jobs

    def close(self) -> None:
        self.sched.close()
        self.hb.close()

    def profile(self, user: str, timezone: str = "UTC", **extra: Any) -> dict[str, Any]:
        response = self.sched.put(f"/v1/users/{user}/profile", json={"timezone": timezone, **extra})
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def create_job(self, user: str, cron: str, channel: dict[str, Any]) -> dict[str, Any]:
        response = self.sched.post(
            f"/v1/users/{user}/heartbeats", json={"schedule_cron": cron, "channel": channel}
        )
        assert response.status_code == 201, response.text
        job: dict[str, Any] = response.json()
        self.jobs.append(job["job_id"])
        return job

    def listed(self, user: str) -> dict[str, dict[str, Any]]:
        response = self.sched.get(f"/v1/users/{user}/heartbeats")
        assert response.status_code == 200, response.text
        return {i["job_id"]: i for i in response.json()["items"]}

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        response = self.hb.get(f"/v1/heartbeats/{job_id}/deliveries", params={"limit": 1000})
        assert response.status_code == 200, response.text
        return response.json()["items"]  # type: ignore[no-any-return]

    def wait_deliveries(
        self, job_id: str, predicate: Callable[[list[dict[str, Any]]], bool]
    ) -> list[dict[str, Any]]:
        def check() -> list[dict[str, Any]] | None:
            items = self.deliveries(job_id)
            return items if predicate(items) else None

        return wait_until(check, WAIT, f"deliveries of job {job_id}", every=0.3)


# --- the module environment ---------------------------------------------------------------


@dataclass
class Infra:
    nats_url: str
    database_url: str
    heartbeat: ServiceProcess
    logs: Path


@pytest.fixture(scope="module")
def infra(pg_server: LocalPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    base: Path = tmp_path_factory.mktemp("scheduler_semantics")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = f"postgresql://postgres@127.0.0.1:{pg_server.port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = f"postgresql://postgres@127.0.0.1:{pg_server.port}/{name}"
    nats_server = LocalNats(base / "nats")
    nats_server.start()
    logs = base / "logs"
    logs.mkdir()
    heartbeat: ServiceProcess | None = None
    try:
        heartbeat = start_service(
            "heartbeat", nats_url=nats_server.url, database_url=database_url, log_dir=logs
        )
        yield Infra(nats_server.url, database_url, heartbeat, logs)
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        nats_server.stop()


@dataclass
class Cluster:
    """The scheduler instances of one test. On close it deletes the test's jobs (through
    a running scheduler, started for the purpose if need be) and stops every instance."""

    infra: Infra
    schedulers: list[ServiceProcess] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    apis: list[Api] = field(default_factory=list)

    def start_scheduler(self, **env: str) -> ServiceProcess:
        service = start_service(
            "scheduler",
            nats_url=self.infra.nats_url,
            database_url=self.infra.database_url,
            log_dir=self.infra.logs,
            extra_env=env,
        )
        self.schedulers.append(service)
        return service

    def api(self, scheduler: ServiceProcess) -> Api:
        client = Api(scheduler.url, self.infra.heartbeat.url, self.jobs)
        self.apis.append(client)
        return client

    def run_env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "NATS_URL": self.infra.nats_url,
            "DATABASE_URL": self.infra.database_url,
            "LITECLAW_API_TOKEN": TOKEN,
            "PYTHONUNBUFFERED": "1",
            **extra,
        }

    def close(self) -> None:
        try:
            if self.jobs:
                live = [s for s in self.schedulers if s.proc.poll() is None]
                service = live[0] if live else self.start_scheduler()
                with httpx.Client(base_url=service.url, headers=AUTH, timeout=30) as client:
                    for job in self.jobs:
                        response = client.delete(f"/v1/heartbeats/{job}")
                        assert response.status_code == 204, response.text
        finally:
            for client in self.apis:
                client.close()
            for service in self.schedulers:
                service.stop()


@pytest.fixture
def cluster(infra: Infra) -> Iterator[Cluster]:
    c = Cluster(infra)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def next_local(zone: str, hour: int) -> datetime:
    """The next hour:00 local time in ``zone`` after now."""
    now = datetime.now(ZoneInfo(zone))
    day = now.date() if now.hour < hour else now.date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, hour, tzinfo=ZoneInfo(zone))


# --- 7. changes move future slots only -------------------------------------------------------


def test_schedule_change_moves_future_slots_only(
    cluster: Cluster, receiver: WebhookReceiver
) -> None:
    api = cluster.api(cluster.start_scheduler())
    user = user_id("sched")
    api.profile(user, "Europe/London")
    job = api.create_job(user, "* * * * * *", webhook_channel(receiver))
    job_id = job["job_id"]
    assert job["schedule_version"] == 1
    assert f"{job_id}:v1:" in job["next_slot_key"]
    before = api.wait_deliveries(job_id, lambda items: len(items) >= 2)

    response = api.sched.patch(f"/v1/heartbeats/{job_id}", json={"schedule_cron": "*/2 * * * * *"})
    changed_at = datetime.now(UTC)
    assert response.status_code == 200, response.text
    assert response.json()["schedule_version"] == 2
    assert response.json()["schedule_cron"] == "*/2 * * * * *"
    assert api.sched.get(f"/v1/heartbeats/{job_id}").json()["schedule_version"] == 2
    listed = api.listed(user)[job_id]
    assert listed["schedule_version"] == 2
    assert f"{job_id}:v2:" in listed["next_slot_key"], listed
    assert at(listed["next_fire_at"]).second % 2 == 0, listed
    upcoming = api.sched.get(f"/v1/heartbeats/{job_id}/upcoming", params={"count": 3}).json()
    assert all(f"{job_id}:v2:" in i["slot_key"] for i in upcoming["items"]), upcoming

    receiver.wait_for(lambda rs: sum(":v2:" in (r.webhook_id or "") for r in rs) >= 2, WAIT)
    for request in receiver.requests:
        key = request.webhook_id or ""
        if ":v1:" in key:
            assert scheduled(request) <= changed_at, f"old-schedule slot after the change: {key}"
        else:
            assert f"{job_id}:v2:" in key, key
            assert scheduled(request) > changed_at - SECOND, key
            assert scheduled(request).second % 2 == 0, key
    # Outcomes recorded under the old schedule stay.
    items = {i["slot_key"]: i for i in api.deliveries(job_id)}
    for old in before:
        assert items[old["slot_key"]] == old


def test_timezone_change_moves_next_fire_local_to_the_new_zone(
    cluster: Cluster, receiver: WebhookReceiver
) -> None:
    api = cluster.api(cluster.start_scheduler())
    user = user_id("zone")
    api.profile(user, "Europe/London")
    daily = api.create_job(user, "0 9 * * *", webhook_channel(receiver))
    every = api.create_job(user, "* * * * * *", webhook_channel(receiver))
    expected = next_local("Europe/London", 9)
    assert daily["next_fire_local"] == expected.isoformat(), daily
    receiver.wait_for(lambda rs: len(rs) >= 2, WAIT)

    waiting_for = api.listed(user)[daily["job_id"]]["next_fire_local"]
    api.profile(user, "Asia/Tokyo")
    changed_at = datetime.now(UTC)
    listed = api.listed(user)
    # A fixed-time schedule carries on by the wall clock: the first 09:00 in Tokyo that
    # is not before the 09:00 London was waiting for (tests/faults/test_local_time.py
    # covers the catch-up when that wall time has already passed in the new zone).
    tokyo = ZoneInfo("Asia/Tokyo")
    expected = at(waiting_for).replace(tzinfo=None).replace(tzinfo=tokyo)
    if expected <= datetime.now(tokyo):
        pytest.skip("at this time of day the move is a catch-up, covered in tests/faults")
    moved = listed[daily["job_id"]]
    assert moved["timezone"] == "Asia/Tokyo"
    assert moved["next_fire_local"] == expected.isoformat(), moved
    assert at(moved["next_fire_at"]) == expected.astimezone(UTC), moved
    assert moved["next_slot_key"] == f"{daily['job_id']}:v1:{expected.isoformat()}"
    assert listed[every["job_id"]]["next_fire_local"].endswith("+09:00")

    # Slots after the change are in Tokyo time; the ones before it keep London's offset.
    receiver.wait_for(lambda rs: any(r.payload["timezone"] == "Asia/Tokyo" for r in rs), WAIT)
    london = ZoneInfo("Europe/London")
    for request in receiver.requests:
        local = at(request.payload["local_time"])
        if request.payload["timezone"] == "Asia/Tokyo":
            assert local.utcoffset() == timedelta(hours=9), request.payload
            assert request.webhook_id == f"{every['job_id']}:v1:{local.isoformat()}"
        else:
            assert scheduled(request) <= changed_at, request.payload
            assert local.utcoffset() == scheduled(request).astimezone(london).utcoffset()
    assert not api.deliveries(daily["job_id"])


# --- 8. upcoming and preview -----------------------------------------------------------------


def test_upcoming_across_dst_matches_the_preview_command(cluster: Cluster) -> None:
    api = cluster.api(cluster.start_scheduler())
    user = user_id("dst")
    api.profile(user, "Europe/London")
    job = api.create_job(user, "30 1 * * *", {"type": "telegram", "chat_id": "7"})
    job_id = job["job_id"]

    response = api.sched.get(
        f"/v1/heartbeats/{job_id}/upcoming",
        params={"from": "2026-10-24T00:00:00Z", "count": 3},
    )
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert len(items) == 3
    # 25 October 2026 is the autumn change in London: 01:30 happens twice, and a
    # fixed-time schedule fires at the first one only (BST, 00:30Z).
    on_the_day = [i for i in items if i["local"].startswith("2026-10-25")]
    assert len(on_the_day) == 1, items
    assert at(on_the_day[0]["at"]) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert on_the_day[0]["local"] == "2026-10-25T01:30:00+01:00"
    assert [at(i["at"]) for i in items] == [
        datetime(2026, 10, 24, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),
    ]
    keys = [i["slot_key"] for i in items]
    assert all(k.startswith(f"{job_id}:v1:") for k in keys), keys

    naive = api.sched.get(
        f"/v1/heartbeats/{job_id}/upcoming", params={"from": "2026-10-24T00:00:00", "count": 3}
    )
    assert naive.status_code == 422, naive.text
    assert [e["field"] for e in naive.json()["errors"]] == ["from"], naive.json()

    def preview(*extra: str) -> list[str]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "liteclaw",
                "heartbeats",
                "preview",
                "--cron",
                "30 1 * * *",
                "--tz",
                "Europe/London",
                "--from",
                "2026-10-24T00:00:00Z",
                "--count",
                "3",
                *extra,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert "slot key" in lines[0], result.stdout
        return [line.split()[-1] for line in lines[1:]]

    assert preview("--job-id", job_id) == keys
    default = preview()
    assert default == [k.replace(job_id, "preview", 1) for k in keys]


# --- 9. misfires --------------------------------------------------------------------------------


def test_misfire_grace_in_plain_seconds_is_accepted(cluster: Cluster) -> None:
    service = cluster.start_scheduler(MISFIRE_GRACE="5")
    assert httpx.get(service.url + "/readyz", timeout=10).status_code == 200


@dataclass
class Outage:
    job_id: str
    stopped_at: datetime
    restarted_at: datetime
    before: list[dict[str, Any]]  # slots the first instance emitted
    after: list[dict[str, Any]]  # slots the restarted instance emitted
    missed: dict[str, Any]  # the one SlotsMissed event


def run_outage(cluster: Cluster, receiver: WebhookReceiver, grace: str, stop_for: float) -> Outage:
    first = cluster.start_scheduler(MISFIRE_GRACE=grace)
    api = cluster.api(first)
    user = user_id("misfire")
    api.profile(user)
    job_id = api.create_job(user, "*/2 * * * * *", webhook_channel(receiver))["job_id"]
    receiver.wait_for(lambda rs: len({r.webhook_id for r in rs}) >= 2, WAIT)

    first.stop()
    stopped_at = datetime.now(UTC)
    time.sleep(stop_for)
    second = cluster.start_scheduler(MISFIRE_GRACE=grace)
    restarted_at = datetime.now(UTC)

    events = wait_until(
        lambda: slots_missed(cluster.infra.nats_url, job_id), WAIT, "a SlotsMissed event"
    )
    # Let the regular slots resume, and check that no second SlotsMissed follows.
    receiver.wait_for(lambda rs: any(scheduled(r) > restarted_at + 2 * SECOND for r in rs), WAIT)
    events = slots_missed(cluster.infra.nats_url, job_id)
    assert len(events) == 1, events
    return Outage(
        job_id, stopped_at, restarted_at, emitted(first, job_id), emitted(second, job_id), events[0]
    )


def check_outage(outage: Outage, receiver: WebhookReceiver) -> tuple[datetime, datetime]:
    """Checks both grace settings share; returns the missed range (first, last)."""
    missed = outage.missed
    assert missed["type"] == "SlotsMissed"
    assert missed["reason"] == "skippedMissed"
    assert missed["count_is_lower_bound"] is False
    first, last = at(missed["first_scheduled_for"]), at(missed["last_scheduled_for"])
    assert missed["count"] == (last - first) // (2 * SECOND) + 1, missed
    assert missed["first_slot_key"].startswith(f"{outage.job_id}:v1:")
    # The missed range starts right after the last slot emitted before the stop.
    last_before = max(at(line["scheduled_for"]) for line in outage.before)
    assert first == last_before + 2 * SECOND, (missed, last_before)
    assert first > outage.stopped_at - 2 * SECOND
    # None of the missed slots was emitted or delivered.
    for line in outage.after:
        assert not first <= at(line["scheduled_for"]) <= last, line
    delivered = Counter(r.webhook_id for r in receiver.requests)
    assert all(n == 1 for n in delivered.values()), delivered
    for request in receiver.requests:
        assert not first <= scheduled(request) <= last, request.webhook_id
    return first, last


def test_short_grace_records_an_outage_as_one_slots_missed(
    cluster: Cluster, receiver: WebhookReceiver
) -> None:
    outage = run_outage(cluster, receiver, "PT5S", stop_for=12)
    _first, last = check_outage(outage, receiver)
    assert outage.missed["count"] >= 3, outage.missed
    # At most one slot of the outage is caught up (the one just after the missed range,
    # if it was still inside the grace window); then the schedule resumes: no storm.
    catch_up = [
        r for r in receiver.requests if outage.stopped_at < scheduled(r) <= last + 2 * SECOND
    ]
    assert len(catch_up) <= 1, [r.webhook_id for r in catch_up]
    early = [line for line in outage.after if at(line["scheduled_for"]) <= outage.restarted_at]
    assert len(early) <= 2, early  # the catch-up, and at most one regular slot
    slots = sorted(at(line["scheduled_for"]) for line in outage.after)
    assert all(b - a == 2 * SECOND for a, b in itertools.pairwise(slots)), slots


def test_long_grace_catches_up_the_latest_missed_slot(
    cluster: Cluster, receiver: WebhookReceiver
) -> None:
    outage = run_outage(cluster, receiver, "PT60S", stop_for=6)
    _first, last = check_outage(outage, receiver)
    assert outage.missed["count"] >= 2, outage.missed
    # The slot after the missed range is the latest one that came due during the outage:
    # it is emitted once by the restarted instance and delivered once.
    caught_up = last + 2 * SECOND
    assert at(outage.after[0]["scheduled_for"]) == caught_up, outage.after[0]
    assert caught_up <= outage.restarted_at + SECOND, (caught_up, outage.restarted_at)
    got = [r for r in receiver.requests if scheduled(r) == caught_up]
    assert len(got) == 1, [r.webhook_id for r in got]
    assert got[0].received_at > caught_up.timestamp()
    [late] = [line for line in outage.after if at(line["scheduled_for"]) == caught_up]
    assert got[0].webhook_id == late["slot_key"]


# --- 10. liteclaw heartbeat run -------------------------------------------------------------------

EMITTED = re.compile(r"claimed (\d+) due jobs, emitted (\d+) SlotDue")


def heartbeat_run(cluster: Cluster, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "liteclaw", "heartbeat", "run"],
        cwd=ROOT,
        env=cluster.run_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 90) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"liteclaw heartbeat run hung:\n{out}\n{err[-3000:]}") from None
    return proc.returncode, out, err


def test_heartbeat_run_emits_each_due_slot_once(
    cluster: Cluster, receiver: WebhookReceiver
) -> None:
    scheduler = cluster.start_scheduler()
    api = cluster.api(scheduler)
    user = user_id("run")
    api.profile(user)
    # A cron firing once a minute, at a second a few seconds from now.
    second = (datetime.now(UTC) + timedelta(seconds=8)).second
    jobs = [
        api.create_job(user, f"{second} * * * * *", webhook_channel(receiver)) for _ in range(5)
    ]
    due = {at(j["next_fire_at"]) for j in jobs}
    assert len(due) == 1, due
    [due_at] = due
    scheduler.stop()
    assert datetime.now(UTC) < due_at, "the scheduler ran into the slot; machine too slow"
    expected = {j["next_slot_key"] for j in jobs}
    time.sleep(max(0.0, (due_at - datetime.now(UTC)).total_seconds()) + 0.5)
    assert receiver.requests == []  # nothing fires without a scheduler

    # Two runs in parallel: each due slot is emitted by exactly one of them.
    runs = [heartbeat_run(cluster), heartbeat_run(cluster)]
    results = [finish(run) for run in runs]
    counts = []
    for code, out, err in results:
        assert code == 0, err[-3000:]
        match = EMITTED.search(out)
        assert match, out
        counts.append(int(match[2]))
    assert sum(counts) == 5, (counts, [out for _, out, _ in results])

    receiver.wait_for(lambda rs: len(rs) >= 5, WAIT)
    time.sleep(1.0)
    seen = Counter(r.webhook_id for r in receiver.requests)
    assert set(seen) == expected
    assert all(n == 1 for n in seen.values()), seen
    for job in jobs:
        items = api.wait_deliveries(job["job_id"], lambda items: len(items) == 1)
        assert [(i["slot_key"], i["outcome"]) for i in items] == [(job["next_slot_key"], "sent")]

    # Nothing is due any more: a further run emits nothing.
    code, out, err = finish(heartbeat_run(cluster))
    assert code == 0, err[-3000:]
    match = EMITTED.search(out)
    assert match and match[2] == "0", out


def test_unknown_job_type_is_refused(cluster: Cluster) -> None:
    code, out, err = finish(heartbeat_run(cluster, HEARTBEAT_JOB_TYPE="nosuch"))
    assert code != 0, out
    assert "HEARTBEAT_JOB_TYPE" in err and "nosuch" in err, err[-3000:]
    assert not EMITTED.search(out), out

    service = start_service(
        "scheduler",
        nats_url=cluster.infra.nats_url,
        database_url=cluster.infra.database_url,
        log_dir=cluster.infra.logs,
        extra_env={"HEARTBEAT_JOB_TYPE": "nosuch"},
        wait=False,
    )
    cluster.schedulers.append(service)

    def readyz() -> httpx.Response | None:
        assert service.proc.poll() is None, "the scheduler exited"
        try:
            return httpx.get(service.url + "/readyz", timeout=5)
        except httpx.HTTPError:
            return None

    response = wait_until(readyz, 60, "scheduler /readyz")
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["down"] == ["job_types"], body
    assert "nosuch" in body["checks"]["job_types"], body


# --- 11. two scheduler instances ------------------------------------------------------------------


def test_two_instances_fire_every_slot_exactly_once(
    cluster: Cluster, receiver: WebhookReceiver
) -> None:
    first = cluster.start_scheduler()
    second = cluster.start_scheduler()
    api = cluster.api(first)
    user = user_id("pair")
    api.profile(user)
    job = api.create_job(user, "* * * * * *", webhook_channel(receiver))
    job_id = job["job_id"]
    receiver.wait_for(lambda rs: len({r.webhook_id for r in rs}) >= 8, WAIT)
    with httpx.Client(base_url=second.url, headers=AUTH, timeout=30) as other:
        assert other.delete(f"/v1/heartbeats/{job_id}").status_code == 204
    stopped_at = datetime.now(UTC)
    time.sleep(2.0)

    emissions = Counter(line["slot_key"] for s in (first, second) for line in emitted(s, job_id))
    assert all(n == 1 for n in emissions.values()), [k for k, n in emissions.items() if n > 1]
    seen = Counter(r.webhook_id for r in receiver.requests)
    assert all(n == 1 for n in seen.values()), [k for k, n in seen.items() if n > 1]
    assert set(seen) == set(emissions)
    seconds = sorted(scheduled(r) for r in receiver.requests)
    assert seconds[0] == at(job["next_fire_at"]), (seconds[0], job["next_fire_at"])
    gaps = [(a, b) for a, b in itertools.pairwise(seconds) if b - a != SECOND]
    assert not gaps, gaps
    assert seconds[-1] <= stopped_at
    items = api.wait_deliveries(job_id, lambda items: len(items) >= len(seen))
    assert {i["slot_key"] for i in items} == set(seen)
    assert {i["outcome"] for i in items} == {"sent"}


# --- 12. stagger --------------------------------------------------------------------------------


def test_stagger_delays_firing_by_the_jobs_own_offset_and_keeps_the_slot(
    cluster: Cluster, receiver: WebhookReceiver
) -> None:
    """With SLOT_STAGGER_MAX, jobs due at the same instant fire at that instant plus an
    offset that is a function of the job id alone; the slot (key, scheduled_for) stays
    the nominal one, so a replay or another instance computes the same slot."""
    bound = 3.0
    api = cluster.api(cluster.start_scheduler(SLOT_STAGGER_MAX=str(bound)))
    user = user_id("stagger")
    api.profile(user)
    # 1. Four jobs on the same every-five-seconds schedule: all due at the same instants.
    jobs = [api.create_job(user, "*/5 * * * * *", webhook_channel(receiver)) for _ in range(4)]
    offsets = {
        job["job_id"]: stagger(uuid.UUID(job["job_id"]), bound).total_seconds() for job in jobs
    }
    assert len(set(offsets.values())) == 4, offsets

    # 2. The due index fires each job at its nominal slot plus its own offset.
    with psycopg.connect(cluster.infra.database_url) as conn:
        rows = conn.execute(
            "SELECT job_id, slot_at, next_fire_at, slot_key FROM scheduler.jobs WHERE user_id = %s",
            (user,),
        ).fetchall()
    assert len(rows) == 4
    for job_id, slot_at, next_fire_at, slot_key in rows:
        assert (next_fire_at - slot_at).total_seconds() == pytest.approx(
            offsets[str(job_id)], abs=0.001
        )
        assert slot_at.second % 5 == 0 and slot_at.microsecond == 0, slot_at
        assert slot_key.startswith(f"{job_id}:v1:"), slot_key

    # 3. Two slots of each job arrive, each no earlier than its nominal instant plus its
    #    offset, under the nominal slot key and scheduled_for.
    def two_each(requests: list[Any]) -> bool:
        per_job = Counter(r.payload["job_id"] for r in requests)
        return all(per_job[job_id] >= 2 for job_id in offsets)

    receiver.wait_for(two_each, WAIT)
    for request in receiver.requests:
        job_id = request.payload["job_id"]
        nominal = scheduled(request)
        assert nominal.second % 5 == 0 and nominal.microsecond == 0, nominal
        assert request.webhook_id == f"{job_id}:v1:{nominal.isoformat()}", request.webhook_id
        fired_after = request.received_at - nominal.timestamp()
        assert fired_after >= offsets[job_id] - 0.05, (job_id, fired_after, offsets[job_id])

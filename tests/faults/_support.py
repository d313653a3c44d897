"""What the fault tests share: a private stack (NATS, a database, the services as real
processes, a fast signature-checking receiver), bulk job registration, the burst plan,
and the exactly-once checks run after every fault.

Helpers from other test modules are copied here on purpose, so the fault tests depend on
``tests/support`` and the product only.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
import nats
import psycopg

from liteclaw.localservers import LocalNats, LocalPostgres, free_port
from services.heartbeat.domain import delivery_id
from services.scheduler.schedule import CronSpec, iter_slots
from tests.support.processes import ROOT, ServiceProcess, start_service, wait_ready

T = TypeVar("T")

N_SLOTS = 5_000  # the minimum burst
USERS = 50
SCHEDULER_STREAM = "LITECLAW_SCHEDULER"
SLOT_DUE = "liteclaw.scheduler.slot_due"
SLOTS_MISSED = "liteclaw.scheduler.slots_missed"
HEARTBEAT_STREAM = "LITECLAW_HEARTBEAT"
OUTCOME_SUBJECTS = (
    "liteclaw.heartbeat.heartbeat_sent",
    "liteclaw.heartbeat.heartbeat_failed",
    "liteclaw.heartbeat.heartbeat_skipped",
)
SECRET = "whsec_" + base64.b64encode(b"fault-tests-secret-0123456").decode()

# The heartbeat's consumer redelivers an unacked slot after DELIVERY_DEADLINE + 30 s
# (ack_wait): keep the deadline short so a killed instance's slots come back quickly.
HEARTBEAT_ENV = {
    "DELIVERY_TIMEOUT": "5",
    "DELIVERY_DEADLINE": "5",
    "SHUTDOWN_GRACE": "5",
}
SCHEDULER_ENV = {"SHUTDOWN_GRACE": "5"}


# --- small helpers --------------------------------------------------------------------------


def say(text: str) -> None:
    """Progress on stdout (shown with ``pytest -s`` and in a failure's captured output)."""
    print(f"[{datetime.now(UTC):%H:%M:%S.%f}] {text}", flush=True)


def wait_until(fn: Callable[[], T | None], timeout: float, what: str, every: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = fn()
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
        time.sleep(every)


def tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return f"(no {path.name})"
    text = path.read_text(errors="replace").splitlines()
    return f"--- {path.name} (last {lines} lines) ---\n" + "\n".join(text[-lines:])


def log_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


class LogWatch:
    """Counts occurrences of a marker in a growing log file, reading only new bytes."""

    def __init__(self, path: Path, marker: str) -> None:
        self.path = path
        self.marker = marker.encode()
        self.offset = 0
        self.count = 0
        self._rest = b""

    def poll(self) -> int:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        data = self._rest + data
        cut = data.rfind(b"\n") + 1
        self.count += data[:cut].count(self.marker)
        self._rest = data[cut:]
        return self.count


# --- the receiver -----------------------------------------------------------------------------


class Receiver:
    """``tests/faults/_receiver.py`` as a subprocess."""

    def __init__(self, logs: Path, delay: float = 0.0) -> None:
        self.port = free_port()
        self.log = logs / f"receiver-{self.port}.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.faults._receiver",
                    "--port",
                    str(self.port),
                    "--secret",
                    SECRET,
                    "--delay",
                    str(delay),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=out,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == b"ready", f"receiver did not start: {line!r}\n{tail(self.log)}"
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def count(self) -> dict[str, int]:
        """{"requests": all requests, "keys": distinct webhook-ids}."""
        return self.client.get("/count").json()  # type: ignore[no-any-return]

    def stats(self) -> tuple[dict[str, int], list[str]]:
        """(count per webhook-id, reasons of failed signature checks)."""
        data = self.client.get("/stats").json()
        return data["seen"], data["bad"]

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --- the stack --------------------------------------------------------------------------------


def create_database(pg: LocalPostgres) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:{pg.port}/{name}"


@dataclass
class Stack:
    """One test's world. ``pg`` is set when the test owns its PostgreSQL (to restart it)."""

    base: Path
    logs: Path
    nats: LocalNats
    database_url: str
    pg: LocalPostgres | None = None
    receiver: Receiver | None = None
    services: list[ServiceProcess] = field(default_factory=list)

    def start(self, name: str, wait: bool = True, **env: str) -> ServiceProcess:
        defaults = HEARTBEAT_ENV if name == "heartbeat" else SCHEDULER_ENV
        service = start_service(
            name,
            nats_url=self.nats.url,
            database_url=self.database_url,
            log_dir=self.logs,
            extra_env={**defaults, **env},
            wait=False,
        )
        self.services.append(service)
        if wait:
            self.ready(service)
        return service

    def ready(self, *services: ServiceProcess) -> None:
        for service in services:
            try:
                wait_ready(service.url, timeout=90, proc=service.proc)
            except (RuntimeError, TimeoutError) as exc:
                raise AssertionError(
                    f"{service.name} not ready: {exc}\n{tail(service.log)}"
                ) from None

    def start_receiver(self, delay: float = 0.0) -> Receiver:
        self.receiver = Receiver(self.logs, delay)
        return self.receiver

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True, connect_timeout=10) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def log_tails(self) -> str:
        return "\n".join(tail(s.log) for s in self.services)

    def close(self) -> None:
        for service in self.services:
            service.kill()
        if self.receiver is not None:
            self.receiver.close()
        self.nats.stop()
        if self.pg is not None:
            self.pg.stop()


@contextmanager
def make_stack(pg_server: LocalPostgres | None) -> Iterator[Stack]:
    """A fresh NATS (its own store dir) and a fresh database (on the session PostgreSQL,
    or, when ``pg_server`` is None, on a private one the test may restart); everything
    started is killed and the directory removed afterwards."""
    # Outside pytest's temp root: a private PostgreSQL runs as another user (see
    # tests/conftest.py), and pytest keeps its root at mode 0700.
    base = Path(tempfile.mkdtemp(prefix="liteclaw-faults-"))
    logs = base / "logs"
    logs.mkdir()
    nats_server = LocalNats(base / "nats")
    stack: Stack | None = None
    own: LocalPostgres | None = None
    try:
        nats_server.start()
        if pg_server is None:
            own = LocalPostgres(base / "pg")
            own.start()
            database_url = own.url
        else:
            database_url = create_database(pg_server)
        stack = Stack(base, logs, nats_server, database_url, pg=own)
        yield stack
    finally:
        if stack is not None:
            stack.close()
        else:
            nats_server.stop()
            if own is not None:
                own.stop()
        if os.environ.get("FAULTS_KEEP_DIR"):
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


# --- jobs and the burst ------------------------------------------------------------------------


def cron_at(*instants: datetime) -> str:
    """A daily 6-field cron firing at the given UTC instants (same hour and minute)."""
    first = instants[0]
    assert all((i.hour, i.minute) == (first.hour, first.minute) for i in instants), instants
    seconds = ",".join(str(i.second) for i in instants)
    return f"{seconds} {first.minute} {first.hour} * * *"


def burst_instant(lead: float, latest_second: int = 59) -> datetime:
    """A whole UTC second at least ``lead`` seconds from now whose second-of-minute is at
    most ``latest_second`` (so later slots of the same job stay in the same minute)."""
    at = (datetime.now(UTC) + timedelta(seconds=lead + 1)).replace(microsecond=0)
    if at.second > latest_second:
        at = (at + timedelta(minutes=1)).replace(second=0)
    return at


def register_jobs(database_url: str, n: int, cron: str, hook: str) -> list[uuid.UUID]:
    """Register ``n`` webhook jobs (over ``USERS`` users in UTC) through the scheduler's
    own application and event store: the path the API takes, minus HTTP. The running
    scheduler's projection indexes them, its relay publishes them."""
    from services.scheduler.application import SchedulerApplication
    from services.scheduler.domain import HeartbeatJob, Profile
    from shared.eventstore import ensure_schema, postgres_env

    ensure_schema(database_url, "scheduler")
    app = SchedulerApplication(env=postgres_env(database_url, "scheduler"))
    try:
        tag = uuid.uuid4().hex[:6]
        users = [f"fault-{tag}-{i}" for i in range(USERS)]
        app.save(*(Profile(u, "UTC", True, None) for u in users))
        channel = {"type": "webhook", "url": hook, "secret": SECRET}
        jobs = [HeartbeatJob(users[i % USERS], "heartbeat", cron, channel) for i in range(n)]
        for start in range(0, n, 1000):
            app.save(*jobs[start : start + 1000])
        return [job.id for job in jobs]
    finally:
        app.close()


@dataclass
class Burst:
    jobs: list[uuid.UUID]
    cron: str
    instants: list[datetime]  # when the jobs fire, every job at each of them
    slots: dict[str, datetime]  # slot key -> instant, every planned slot of every job

    @property
    def due(self) -> datetime:
        return self.instants[0]

    def keys_at(self, instant: datetime) -> set[str]:
        return {key for key, at in self.slots.items() if at == instant}

    @property
    def expected(self) -> set[str]:
        """The slots of the first instant: the burst."""
        return self.keys_at(self.due)


def prepare_burst(stack: Stack, lead: float = 10.0, gap: int | None = None) -> Burst:
    """Register ``N_SLOTS`` jobs that all fire at the same second ``lead`` s from now (and,
    with ``gap``, once more ``gap`` s later, in the same minute), and wait until the
    scheduler has indexed every one of them."""
    assert stack.receiver is not None
    due = burst_instant(lead, 59 - (gap or 0))
    instants = [due] if gap is None else [due, due + timedelta(seconds=gap)]
    cron = cron_at(*instants)
    began = time.monotonic()
    jobs = register_jobs(stack.database_url, N_SLOTS, cron, stack.receiver.url)
    say(f"registered {len(jobs)} jobs in {time.monotonic() - began:.1f}s; due {due:%H:%M:%S}")
    slots = planned_slots(jobs, cron, len(instants), due - timedelta(seconds=1))
    assert set(slots.values()) == set(instants), "the cron does not fire at the planned instants"
    wait_indexed(stack, {k for k, at in slots.items() if at == due}, due)
    return Burst(jobs, cron, instants, slots)


def planned_slots(
    jobs: list[uuid.UUID], cron: str, count: int, after: datetime
) -> dict[str, datetime]:
    """The first ``count`` slots of each job after ``after``, as the scheduler computes
    them (version 1, UTC): slot key -> instant."""
    spec, zone = CronSpec.parse(cron), ZoneInfo("UTC")
    out = {}
    for job in jobs:
        for slot in itertools.islice(
            iter_slots(spec, zone, after, job_id=job, schedule_version=1), count
        ):
            out[slot.key] = slot.at
    return out


def wait_indexed(stack: Stack, expected: set[str], due: datetime) -> None:
    keys = list(expected)

    def indexed() -> bool:
        rows = stack.sql("SELECT count(*) FROM scheduler.jobs WHERE slot_key = ANY(%s)", keys)
        return bool(rows[0][0] == len(keys))

    left = (due - datetime.now(UTC)).total_seconds() - 1
    assert left > 0, f"no time left to index the jobs before {due}: the machine is too slow"
    wait_until(indexed, left, f"the scheduler indexing {len(keys)} jobs before {due}", every=0.5)
    left = (due - datetime.now(UTC)).total_seconds()
    say(f"indexed; {left:.1f}s before the burst")


def sleep_until(instant: datetime) -> None:
    time.sleep(max(0.0, (instant - datetime.now(UTC)).total_seconds()))


# --- reading what the system recorded ------------------------------------------------------------


def stored_outcomes(stack: Stack) -> dict[str, list[str]]:
    """Every outcome in the heartbeat's event store, by slot key (a list, so a second
    stored outcome for one slot would show)."""
    rows = stack.sql(
        "SELECT originator_id, topic, state FROM heartbeat.heartbeat_events WHERE topic LIKE %s",
        "services.heartbeat.domain:Delivery.%",
    )
    out: dict[str, list[str]] = {}
    for originator_id, _topic, state in rows:
        data = json.loads(bytes(state))
        key = data["slot_key"]
        assert delivery_id(key) == originator_id, (key, originator_id)
        out.setdefault(key, []).append(data["outcome"])
    return out


def stored_count(stack: Stack) -> int:
    try:
        rows = stack.sql(
            "SELECT count(*) FROM heartbeat.heartbeat_events WHERE topic LIKE %s",
            "services.heartbeat.domain:Delivery.%",
        )
    except psycopg.Error:
        return 0
    return int(rows[0][0])


def projected(stack: Stack) -> dict[str, str]:
    """The deliveries read model (what the API serves): slot key -> outcome."""
    return dict(stack.sql("SELECT slot_key, outcome FROM heartbeat.deliveries"))  # type: ignore[arg-type]


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


def messages(url: str, stream: str, subject: str) -> list[dict[str, Any]]:
    """Every message stored on ``subject`` in ``stream``, parsed, oldest first."""
    return asyncio.run(_messages(url, stream, subject))


def sent_lines(stack: Stack) -> Counter[str]:
    """How many ``"outcome": "sent"`` log lines each slot key has, over every heartbeat."""
    counts: Counter[str] = Counter()
    for service in stack.services:
        if service.name == "heartbeat":
            for line in log_lines(service.log):
                if line.get("outcome") == "sent":
                    counts[line["slot_key"]] += 1
    return counts


def emitted_keys(service: ServiceProcess) -> list[str]:
    """The slot keys a scheduler logged as published (``decision: slot_due``)."""
    return [
        line["slot_key"] for line in log_lines(service.log) if line.get("decision") == "slot_due"
    ]


# --- the checks ---------------------------------------------------------------------------------


@dataclass
class Report:
    stored: dict[str, list[str]]
    seen: dict[str, int]
    repeats: int  # requests the receiver got beyond the first, per slot; allowed

    def summary(self) -> str:
        outcomes = Counter(o for v in self.stored.values() for o in v)
        return f"outcomes {dict(outcomes)}; receiver repeats {self.repeats}"


def wait_settled(stack: Stack, sent: set[str], timeout: float) -> None:
    """Wait until the store holds an outcome for every slot in ``sent`` and the receiver
    saw each of them, then a little longer for stragglers."""
    assert stack.receiver is not None
    receiver = stack.receiver
    started = time.monotonic()

    def done() -> bool:
        return stored_count(stack) >= len(sent) and receiver.count()["keys"] >= len(sent)

    try:
        wait_until(done, timeout, "every slot recorded and received", every=1.0)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; stored {stored_count(stack)}, receiver {receiver.count()}\n"
            + stack.log_tails()
        ) from None
    say(f"settled after {time.monotonic() - started:.1f}s; waiting for stragglers")
    time.sleep(3.0)


def check_exactly_once(
    stack: Stack,
    sent: set[str],
    not_sent: set[str] = frozenset(),  # type: ignore[assignment]
) -> Report:
    """After a fault: every slot in ``sent`` has exactly one stored outcome and it is
    ``sent``; no slot anywhere has two; nothing in ``not_sent`` (or unknown) was stored
    or delivered; the receiver saw every sent slot key, with valid signatures; the read
    model, the logs and the heartbeat's outcome events agree."""
    assert stack.receiver is not None
    context = stack.log_tails()
    stored = stored_outcomes(stack)
    twice = {k: v for k, v in stored.items() if len(v) > 1}
    assert not twice, f"slots with more than one stored outcome: {list(twice.items())[:5]}"
    missing = sent - stored.keys()
    assert not missing, (
        f"{len(missing)} slots have no outcome, e.g. {sorted(missing)[:3]}\n{context}"
    )
    unexpected = stored.keys() - sent
    assert not unexpected, f"outcomes for slots that must not fire: {sorted(unexpected)[:5]}"
    not_sent_ok = {k: v for k, v in stored.items() if v != ["sent"]}
    assert not not_sent_ok, f"slots not recorded sent: {list(not_sent_ok.items())[:5]}\n{context}"

    seen, bad = stack.receiver.stats()
    assert not bad, f"{len(bad)} requests failed signature verification: {bad[:3]}"
    unseen = sent - seen.keys()
    assert not unseen, f"the receiver never saw {len(unseen)} slots, e.g. {sorted(unseen)[:3]}"
    stray = seen.keys() - sent
    assert not stray, f"the receiver got slots that must not be sent: {sorted(stray)[:5]}"
    assert not (seen.keys() & not_sent)

    twice_logged = {k: n for k, n in sent_lines(stack).items() if n > 1}
    assert not twice_logged, f"slots logged sent twice: {list(twice_logged.items())[:5]}"

    # The read model catches up from the store.
    wait_until(lambda: len(projected(stack)) >= len(sent), 30, "the deliveries read model")
    rows = projected(stack)
    assert rows == dict.fromkeys(sent, "sent"), "the deliveries read model disagrees"

    # Each outcome is published once (relay dedup by Nats-Msg-Id) as HeartbeatSent.
    def published() -> list[dict[str, Any]] | None:
        events = messages(stack.nats.url, HEARTBEAT_STREAM, OUTCOME_SUBJECTS[0])
        return events if len(events) >= len(sent) else None

    events = wait_until(published, 30, "HeartbeatSent events on the heartbeat stream", every=1.0)
    per_key = Counter(e["slot_key"] for e in events)
    assert set(per_key) == sent, "HeartbeatSent events do not match the sent slots"
    assert all(n == 1 for n in per_key.values()), [k for k, n in per_key.items() if n > 1][:5]
    for subject in OUTCOME_SUBJECTS[1:]:
        assert not messages(stack.nats.url, HEARTBEAT_STREAM, subject), subject

    repeats = sum(n - 1 for n in seen.values())
    report = Report(stored, seen, repeats)
    say(report.summary())
    return report


def no_slots_missed(stack: Stack) -> None:
    """With the default 15-minute grace, a burst delayed by seconds misses nothing."""
    missed = messages(stack.nats.url, SCHEDULER_STREAM, SLOTS_MISSED)
    assert not missed, f"{len(missed)} SlotsMissed events, e.g. {missed[:2]}"


def slot_due_keys(stack: Stack) -> Counter[str]:
    """Slot keys of the SlotDue messages stored in the scheduler's stream."""
    return Counter(m["slot_key"] for m in messages(stack.nats.url, SCHEDULER_STREAM, SLOT_DUE))


def kill9(service: ServiceProcess) -> None:
    """kill -9, and reap it."""
    if service.proc.poll() is None:
        os.kill(service.proc.pid, signal.SIGKILL)
    service.proc.wait(10)


def stop_all(services: list[ServiceProcess], timeout: float = 30) -> None:
    """SIGTERM every live service at once, then wait for each (kill -9 after ``timeout``)."""
    live = [s for s in services if s.proc.poll() is None]
    for service in live:
        service.proc.send_signal(signal.SIGTERM)
    for service in live:
        service.stop(timeout)

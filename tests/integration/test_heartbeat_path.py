"""The heartbeat path, end to end over real NATS JetStream and PostgreSQL: SlotDue in,
webhook or Telegram message out, one durable outcome per slot.

One module environment (its own NATS, its own database, one scheduler and one heartbeat
process, a local Telegram Bot API stand-in) serves most tests; each test uses its own
user, jobs and webhook receiver. Slots are either fired by the scheduler (per-second
crons) or published by hand to ``liteclaw.scheduler.slot_due`` to pin down one decision.
The delivery-timeout test runs its own heartbeat (short ``DELIVERY_TIMEOUT``) on a fresh
NATS, since every heartbeat instance on one NATS shares the same durable consumer.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
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
from shared.broker import ensure_streams
from shared.contracts import SlotDue
from tests.support.processes import TOKEN, ServiceProcess, start_service
from tests.support.receivers import (
    WebhookReceiver,
    _BackgroundServer,
    _QuietHandler,
    _WebhookHandler,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SLOT_DUE = "liteclaw.scheduler.slot_due"
SCHEDULER_STREAM = "LITECLAW_SCHEDULER"
DLQ_SUBJECT = "liteclaw.dlq.heartbeat"
DLQ_STREAM = "LITECLAW_DLQ"
TELEGRAM_TOKEN = f"424242:AAtest-{uuid.uuid4().hex}"
WAIT = 45.0  # bounded waits: generous, the machine is shared with other test runs
EVERY_SECOND = "* * * * * *"

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


def outcome_lines(path: Path, slot_key: str) -> list[str]:
    return [
        line["outcome"]
        for line in log_lines(path)
        if line.get("slot_key") == slot_key and "outcome" in line
    ]


async def _publish(url: str, body: bytes, msg_id: str | None) -> None:
    nc = await nats.connect(url, connect_timeout=10)
    try:
        js = nc.jetstream()
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        await js.publish(SLOT_DUE, body, stream=SCHEDULER_STREAM, headers=headers, timeout=10)
    finally:
        await nc.close()


def publish_slot_due(url: str, body: bytes, msg_id: str | None = None) -> None:
    asyncio.run(_publish(url, body, msg_id))


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


def wait_dead_letters(
    url: str, match: Callable[[dict[str, Any]], bool], count: int = 1, timeout: float = WAIT
) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]] | None:
        letters = [m for m in messages(url, DLQ_STREAM, DLQ_SUBJECT) if match(m)]
        return letters if len(letters) >= count else None

    return wait_until(found, timeout, f"{count} dead letter(s) on {DLQ_SUBJECT}", every=0.5)


def make_slot(
    channel: dict[str, Any],
    *,
    job_id: uuid.UUID | None = None,
    user_id: str = "hand-user",
    scheduled_for: datetime | None = None,
    timezone: str = "UTC",
) -> SlotDue:
    """A valid SlotDue as the scheduler would publish it, with a slot key no real slot has
    (it carries microseconds)."""
    job_id = job_id or uuid.uuid4()
    at = scheduled_for or datetime.now(UTC)
    local = at.astimezone(ZoneInfo(timezone))
    return SlotDue(
        slot_key=f"{job_id}:v1:{local.isoformat()}",
        job_id=job_id,
        user_id=user_id,
        job_type="heartbeat",
        schedule_version=1,
        scheduled_for=at,
        local_time=local.isoformat(),
        timezone=timezone,
        channel=channel,  # type: ignore[arg-type]
    )


def webhook_channel(receiver: WebhookReceiver) -> dict[str, str]:
    return {"type": "webhook", "url": receiver.url, "secret": receiver.secret}


def by_key(requests: list[Any], key: str) -> list[Any]:
    return [r for r in requests if r.webhook_id == key]


def scheduled(request: Any) -> datetime:
    return datetime.fromisoformat(request.payload["scheduled_for"])


class Api:
    """The scheduler's and the heartbeat's HTTP APIs; deletes its jobs when closed."""

    def __init__(self, scheduler_url: str, heartbeat_url: str) -> None:
        self.sched = httpx.Client(base_url=scheduler_url, headers=AUTH, timeout=30)
        self.hb = httpx.Client(base_url=heartbeat_url, headers=AUTH, timeout=30)
        self.jobs: list[str] = []

    def close(self) -> None:
        for job in self.jobs:
            try:
                self.sched.delete(f"/v1/heartbeats/{job}")
            except httpx.HTTPError:
                pass
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

    def deliveries(self, job_id: str | uuid.UUID) -> list[dict[str, Any]]:
        response = self.hb.get(f"/v1/heartbeats/{job_id}/deliveries", params={"limit": 1000})
        assert response.status_code == 200, response.text
        return response.json()["items"]  # type: ignore[no-any-return]

    def wait_deliveries(
        self,
        job_id: str | uuid.UUID,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float = WAIT,
        what: str = "deliveries",
    ) -> list[dict[str, Any]]:
        def check() -> list[dict[str, Any]] | None:
            items = self.deliveries(job_id)
            return items if predicate(items) else None

        return wait_until(check, timeout, f"{what} of job {job_id}", every=0.3)

    def wait_outcome(self, job_id: str | uuid.UUID, slot_key: str) -> dict[str, Any]:
        items = self.wait_deliveries(
            job_id, lambda items: any(i["slot_key"] == slot_key for i in items), what=slot_key
        )
        [item] = [i for i in items if i["slot_key"] == slot_key]
        return item


# --- local stand-ins ------------------------------------------------------------------------


class _RetryAfterHandler(_WebhookHandler):
    """Answers like the webhook receiver, with ``Retry-After: 1`` on every 429."""

    def _answer(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.send_response(status)
        if status == 429:
            self.send_header("retry-after", "1")
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


class RetryAfterReceiver(WebhookReceiver):
    def __init__(self, statuses: list[int]) -> None:
        super().__init__(statuses=statuses)
        self._handler = _RetryAfterHandler


class _InvalidHttpHandler(_WebhookHandler):
    """Records the request, then answers with a status line that is not HTTP."""

    def _answer(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.wfile.write(b"HTTP/1.1 two hundred OK\r\ncontent-length: 0\r\n\r\n")
        self.wfile.flush()


class InvalidHttpReceiver(WebhookReceiver):
    def __init__(self) -> None:
        super().__init__()
        self._handler = _InvalidHttpHandler


class _SlowHandler(_WebhookHandler):
    """Records the request, then takes far longer than DELIVERY_TIMEOUT to answer."""

    def do_POST(self) -> None:
        receiver: WebhookReceiver = self.server.owner  # type: ignore[attr-defined]
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        status = receiver._record(self.command, self.path, headers, body)
        time.sleep(3.0)
        try:
            self._answer(status)
        except OSError:
            pass  # the client gave up long ago


class SlowReceiver(WebhookReceiver):
    def __init__(self) -> None:
        super().__init__()
        self._handler = _SlowHandler


@dataclass
class TelegramCall:
    path: str
    body: dict[str, Any]
    received_at: float


class _TelegramHandler(_QuietHandler):
    def do_POST(self) -> None:
        server: TelegramStandIn = self.server.owner  # type: ignore[attr-defined]
        raw = self._read_body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"unparseable": raw.decode("utf-8", "replace")}
        with server.lock:
            server.calls.append(TelegramCall(self.path, body, time.time()))
        if not self.path.endswith("/sendMessage"):
            self._answer(404, b'{"ok":false}', "application/json")
            return
        result = {"ok": True, "result": {"message_id": len(server.calls), "text": body}}
        self._answer(200, json.dumps(result).encode(), "application/json")


class TelegramStandIn(_BackgroundServer):
    """A local Telegram Bot API: records every POST (path and JSON body), answers ok."""

    def __init__(self) -> None:
        super().__init__(_TelegramHandler)
        self.lock = threading.Lock()
        self.calls: list[TelegramCall] = []

    def sent(self, chat_id: str) -> list[TelegramCall]:
        with self.lock:
            return [c for c in self.calls if str(c.body.get("chat_id")) == chat_id]


# --- the module environment ---------------------------------------------------------------


@dataclass
class Env:
    nats_url: str
    database_url: str
    scheduler: ServiceProcess
    heartbeat: ServiceProcess
    telegram: TelegramStandIn
    logs: Path
    apis: list[Api] = field(default_factory=list)


def create_database(pg: LocalPostgres) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:{pg.port}/{name}"


@pytest.fixture(scope="module")
def env(pg_server: LocalPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base: Path = tmp_path_factory.mktemp("heartbeat_path")
    database_url = create_database(pg_server)
    nats_server = LocalNats(base / "nats")
    nats_server.start()
    telegram = TelegramStandIn()
    telegram.start()
    logs = base / "logs"
    logs.mkdir()
    services: list[ServiceProcess] = []
    try:
        common = {"nats_url": nats_server.url, "database_url": database_url, "log_dir": logs}
        heartbeat = start_service(
            "heartbeat",
            **common,  # type: ignore[arg-type]
            extra_env={
                "DELIVERY_TIMEOUT": "5",
                "DELIVERY_DEADLINE": "10",
                "MAX_DELIVER": "2",
                "TELEGRAM_API_BASE": telegram.base_url,
                "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
            },
        )
        services.append(heartbeat)
        scheduler = start_service("scheduler", **common)  # type: ignore[arg-type]
        services.append(scheduler)
        yield Env(nats_server.url, database_url, scheduler, heartbeat, telegram, logs)
    finally:
        for service in reversed(services):
            service.stop()
        telegram.stop()
        nats_server.stop()


@pytest.fixture
def api(env: Env) -> Iterator[Api]:
    client = Api(env.scheduler.url, env.heartbeat.url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def user_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- 1. retries -------------------------------------------------------------------------------


def test_5xx_twice_then_success_is_one_sent_delivery_after_three_attempts(
    env: Env, api: Api
) -> None:
    with WebhookReceiver(statuses=[500, 500]) as receiver:
        receiver.default_status = 204
        slot = make_slot(webhook_channel(receiver))
        publish_slot_due(env.nats_url, slot.model_dump_json().encode(), slot.slot_key)

        item = api.wait_outcome(slot.job_id, slot.slot_key)
        assert item["outcome"] == "sent", item
        assert item["attempts"] == 3, item
        assert item["error_class"] is None, item
        assert [i["slot_key"] for i in api.deliveries(slot.job_id)] == [slot.slot_key]

        requests = receiver.requests
        assert [r.status for r in requests] == [500, 500, 204]
        assert {r.webhook_id for r in requests} == {slot.slot_key}
        assert all(r.verified for r in requests), [r.verify_error for r in requests]
        assert requests[0].payload["slot_key"] == slot.slot_key


def test_429_with_retry_after_then_success(env: Env, api: Api) -> None:
    receiver = RetryAfterReceiver(statuses=[429])
    receiver.default_status = 204
    with receiver:
        slot = make_slot(webhook_channel(receiver))
        publish_slot_due(env.nats_url, slot.model_dump_json().encode(), slot.slot_key)

        item = api.wait_outcome(slot.job_id, slot.slot_key)
        assert item["outcome"] == "sent", item
        assert item["attempts"] == 2, item

        requests = receiver.requests
        assert [r.status for r in requests] == [429, 204]
        assert {r.webhook_id for r in requests} == {slot.slot_key}
        # Retry-After: 1 is honoured (with at most +-50 % jitter), not the 0.2 s backoff.
        gap = requests[1].received_at - requests[0].received_at
        assert gap >= 0.45, f"retried after {gap:.2f}s despite Retry-After: 1"


def test_4xx_fails_at_once_and_is_dead_lettered_without_the_secret(env: Env, api: Api) -> None:
    with WebhookReceiver(statuses=[400]) as receiver:
        slot = make_slot(webhook_channel(receiver))
        publish_slot_due(env.nats_url, slot.model_dump_json().encode(), slot.slot_key)

        item = api.wait_outcome(slot.job_id, slot.slot_key)
        assert item["outcome"] == "failed", item
        assert item["attempts"] == 1, item
        assert item["error_class"] == "HTTP400", item

        [letter] = wait_dead_letters(env.nats_url, lambda m: slot.slot_key in m["payload"])
        assert letter["type"] == "DeadLetter"
        assert letter["service"] == "heartbeat"
        assert letter["subject"] == SLOT_DUE
        assert "HTTP400" in letter["reason"], letter
        assert receiver.secret not in letter["payload"], "the webhook secret was dead-lettered"
        assert receiver.secret.removeprefix("whsec_") not in json.dumps(letter)
        assert json.loads(letter["payload"])["slot_key"] == slot.slot_key

        time.sleep(1.0)  # a permanent failure is not retried
        assert len(receiver.requests) == 1


def test_receiver_answering_invalid_http_is_retried_then_failed(env: Env, api: Api) -> None:
    """An answer the HTTP client cannot parse is the receiver's fault: it is retried like
    any transient error until DELIVERY_DEADLINE (10 s here), then recorded ``failed`` and
    dead-lettered, never retried forever as if our own database were down."""
    with InvalidHttpReceiver() as receiver:
        slot = make_slot(webhook_channel(receiver))
        publish_slot_due(env.nats_url, slot.model_dump_json().encode(), slot.slot_key)

        item = api.wait_outcome(slot.job_id, slot.slot_key)
        assert item["outcome"] == "failed", item
        assert item["error_class"] == "ClientResponseError", item
        assert item["attempts"] >= 2, item
        assert len(receiver.requests) == item["attempts"]
        [letter] = wait_dead_letters(env.nats_url, lambda m: slot.slot_key in m["payload"])
        assert "ClientResponseError" in letter["reason"], letter


def test_receiver_that_never_answers_in_time_fails_with_timeout(
    nats_server: LocalNats, database_url: str, log_dir: Path
) -> None:
    heartbeat = start_service(
        "heartbeat",
        nats_url=nats_server.url,
        database_url=database_url,
        log_dir=log_dir,
        extra_env={"DELIVERY_TIMEOUT": "0.5", "DELIVERY_DEADLINE": "2"},
    )
    api = Api(heartbeat.url, heartbeat.url)
    try:
        with SlowReceiver() as receiver:
            slot = make_slot(webhook_channel(receiver))
            published = time.monotonic()
            publish_slot_due(nats_server.url, slot.model_dump_json().encode(), slot.slot_key)

            item = api.wait_outcome(slot.job_id, slot.slot_key)
            took = time.monotonic() - published
            assert item["outcome"] == "failed", item
            assert item["error_class"] == "Timeout", item
            assert item["attempts"] >= 2, item  # a timeout is transient: retried
            assert took < 2 + 15, f"the 2 s delivery deadline took {took:.1f}s"
            requests = receiver.requests
            assert len(requests) == item["attempts"]
            assert {r.webhook_id for r in requests} == {slot.slot_key}

            [letter] = wait_dead_letters(nats_server.url, lambda m: slot.slot_key in m["payload"])
            assert "Timeout" in letter["reason"], letter
            assert receiver.secret not in letter["payload"]
    finally:
        api.close()
        heartbeat.stop()


# --- 2. Telegram ------------------------------------------------------------------------------


@dataclass
class TelegramRun:
    job_id: str
    timezone: str
    calls: list[TelegramCall]
    sent: list[dict[str, Any]]


@pytest.fixture(scope="module")
def telegram_run(env: Env) -> Iterator[TelegramRun]:
    """One job on the Telegram channel, run for a few slots and then deleted."""
    api = Api(env.scheduler.url, env.heartbeat.url)
    try:
        user = user_id("tg")
        timezone = "Asia/Tokyo"
        api.profile(user, timezone)
        job = api.create_job(user, EVERY_SECOND, {"type": "telegram", "chat_id": "42"})
        api.wait_deliveries(
            job["job_id"], lambda items: sum(i["outcome"] == "sent" for i in items) >= 2
        )
        response = api.sched.delete(f"/v1/heartbeats/{job['job_id']}")
        assert response.status_code == 204, response.text
        time.sleep(2.0)  # let slots emitted before the delete settle
        sent = [i for i in api.deliveries(job["job_id"]) if i["outcome"] == "sent"]
        yield TelegramRun(job["job_id"], timezone, env.telegram.sent("42"), sent)
    finally:
        api.close()


def test_telegram_channel_sends_the_local_time_to_the_chat(
    env: Env, telegram_run: TelegramRun
) -> None:
    calls = telegram_run.calls
    assert len(calls) >= 2
    assert all(c.path == f"/bot{TELEGRAM_TOKEN}/sendMessage" for c in calls), calls[0].path
    assert all(c.body["chat_id"] == "42" for c in calls), calls[0].body
    # One message per recorded `sent` slot (the stand-in never fails, so no retries).
    assert len(calls) == len(telegram_run.sent), (len(calls), len(telegram_run.sent))
    # Each text names the slot's local date and time in the user's zone.
    expected = set()
    for item in telegram_run.sent:
        local = datetime.fromisoformat(item["slot_key"].split(":v1:", 1)[1])
        assert local.utcoffset() == timedelta(hours=9), item["slot_key"]
        expected.add(f"{local:%A %d %B %Y, %H:%M}")
    texts = [c.body["text"] for c in calls]
    for text in texts:
        assert "Asia/Tokyo" in text, text
        assert any(stamp in text for stamp in expected), (text, expected)
    for stamp in expected:
        assert any(stamp in text for text in texts), (stamp, texts)


def test_telegram_token_never_appears_in_the_logs(env: Env, telegram_run: TelegramRun) -> None:
    assert telegram_run.calls
    for log in sorted(env.logs.iterdir()):
        text = log.read_text(errors="replace")
        leaked = [line for line in text.splitlines() if TELEGRAM_TOKEN in line]
        assert not leaked, f"bot token in {log.name}: {leaked[0][:300]}"


# --- 3. poison messages -------------------------------------------------------------------------


def test_poison_slot_due_is_dead_lettered_and_does_not_block(
    env: Env, api: Api, receiver: WebhookReceiver
) -> None:
    user = user_id("poison")
    api.profile(user)
    job = api.create_job(user, EVERY_SECOND, webhook_channel(receiver))
    receiver.wait_for(lambda rs: len(rs) >= 1, WAIT)

    marker = uuid.uuid4().hex
    garbage = b"\x00\xffnot json at all " + marker.encode()
    bad_fields = json.dumps(
        {
            "type": "SlotDue",
            "slot_key": f"poison-{marker}",
            "job_id": "not-a-uuid",
            "user_id": user,
            "job_type": "heartbeat",
            "schedule_version": 1,
            "scheduled_for": "yesterday-ish",
            "local_time": "2026-01-01T00:00:00+00:00",
            "timezone": "UTC",
            "channel": {"type": "webhook", "url": receiver.url, "secret": receiver.secret},
        }
    ).encode()
    poisoned_at = datetime.now(UTC)
    for i in range(10):
        publish_slot_due(env.nats_url, garbage + str(i).encode())
    publish_slot_due(env.nats_url, bad_fields)

    letters = wait_dead_letters(env.nats_url, lambda m: marker in m["payload"], count=11)
    assert len(letters) == 11, [letter["reason"] for letter in letters]
    for letter in letters:
        assert letter["subject"] == SLOT_DUE
        assert letter["deliveries"] == 2, letter  # MAX_DELIVER=2
        assert letter["reason"].startswith("invalid SlotDue"), letter
    [named] = [letter for letter in letters if f"poison-{marker}" in letter["payload"]]
    assert "job_id" in named["reason"], named["reason"]
    assert "scheduled_for" in named["reason"], named["reason"]
    assert receiver.secret not in named["payload"]
    garbled = [letter for letter in letters if letter is not named]
    assert {letter["payload"] for letter in garbled} == {
        (garbage + str(i).encode()).decode("utf-8", "replace") for i in range(10)
    }

    # Meanwhile the valid job's heartbeats kept flowing: every slot from the moment the
    # poison arrived was delivered, promptly.
    # (A scheduler that lags more than a second may fold a slot into the next one by
    # design, so allow one of the four to be missing.)
    window_end = poisoned_at + timedelta(seconds=4)
    receiver.wait_for(
        lambda rs: any(scheduled(r) > window_end + timedelta(seconds=1) for r in rs), WAIT
    )
    during = sorted(
        {scheduled(r) for r in receiver.requests if poisoned_at < scheduled(r) <= window_end}
    )
    assert len(during) >= 3, during
    late = [r.received_at - scheduled(r).timestamp() for r in receiver.requests]
    assert max(late) < 10, f"heartbeats were held up: up to {max(late):.1f}s late"
    items = api.deliveries(job["job_id"])
    assert all(i["outcome"] == "sent" for i in items), items


# --- 4. duplicates and early slots ---------------------------------------------------------------


def test_same_slot_published_twice_is_recorded_once(
    env: Env, api: Api, receiver: WebhookReceiver
) -> None:
    slot = make_slot(webhook_channel(receiver))
    body = slot.model_dump_json().encode()
    # Different Nats-Msg-Ids, so JetStream's duplicate window does not drop the twin.
    publish_slot_due(env.nats_url, body, f"{slot.slot_key}#1")
    item = api.wait_outcome(slot.job_id, slot.slot_key)
    assert item["outcome"] == "sent", item
    receiver.wait_for(lambda rs: len(rs) >= 1, WAIT)

    publish_slot_due(env.nats_url, body, f"{slot.slot_key}#2")
    wait_until(
        lambda: "skippedDuplicate" in outcome_lines(env.heartbeat.log, slot.slot_key),
        WAIT,
        "a skippedDuplicate log line",
    )
    lines = [
        line
        for line in log_lines(env.heartbeat.log)
        if line.get("slot_key") == slot.slot_key and line.get("outcome") == "skippedDuplicate"
    ]
    assert [line["msg"] for line in lines] == ["heartbeat outcome"]
    assert outcome_lines(env.heartbeat.log, slot.slot_key) == ["sent", "skippedDuplicate"]
    time.sleep(0.5)
    assert [r.webhook_id for r in receiver.requests] == [slot.slot_key]  # not sent again
    [item] = api.deliveries(slot.job_id)
    assert (item["slot_key"], item["outcome"], item["attempts"]) == (slot.slot_key, "sent", 1)


def test_twins_handled_concurrently_are_recorded_once(
    nats_server: LocalNats, database_url: str, log_dir: Path, receiver: WebhookReceiver
) -> None:
    """Both copies are in the stream before the heartbeat starts, so its first fetch
    takes them together and they race past the outcome lookup: the durable save must
    still keep exactly one, and name the other skippedDuplicate."""
    asyncio.run(ensure_streams([nats_server.url]))
    slot = make_slot(webhook_channel(receiver))
    body = slot.model_dump_json().encode()
    publish_slot_due(nats_server.url, body, f"{slot.slot_key}#1")
    publish_slot_due(nats_server.url, body, f"{slot.slot_key}#2")
    heartbeat = start_service(
        "heartbeat", nats_url=nats_server.url, database_url=database_url, log_dir=log_dir
    )
    api = Api(heartbeat.url, heartbeat.url)
    try:
        wait_until(
            lambda: len(outcome_lines(heartbeat.log, slot.slot_key)) >= 2,
            WAIT,
            "both copies decided",
        )
        outcomes = outcome_lines(heartbeat.log, slot.slot_key)
        items = wait_until(lambda: api.deliveries(slot.job_id), 10, "the stored outcome")
        assert [(i["slot_key"], i["outcome"]) for i in items] == [(slot.slot_key, "sent")]
        assert sorted(outcomes) == ["sent", "skippedDuplicate"], outcomes
    finally:
        api.close()
        heartbeat.stop()


def test_slot_published_early_is_delivered_at_its_instant(
    env: Env, api: Api, receiver: WebhookReceiver
) -> None:
    due = datetime.now(UTC) + timedelta(seconds=3)
    slot = make_slot(webhook_channel(receiver), scheduled_for=due)
    publish_slot_due(env.nats_url, slot.model_dump_json().encode(), slot.slot_key)

    wait_until(
        lambda: "skippedNotDue" in outcome_lines(env.heartbeat.log, slot.slot_key),
        WAIT,
        "a skippedNotDue log line",
    )
    item = api.wait_outcome(slot.job_id, slot.slot_key)
    assert item["outcome"] == "sent", item
    [request] = receiver.requests
    assert request.webhook_id == slot.slot_key
    assert request.received_at >= due.timestamp(), (
        f"delivered {due.timestamp() - request.received_at:.3f}s before its instant"
    )


# --- 5. disable, pause, resume, delete ------------------------------------------------------------


def no_slots_after(receiver: WebhookReceiver, instant: datetime, settle: float = 3.0) -> None:
    """Wait ``settle`` seconds and assert nothing scheduled after ``instant`` arrived."""
    time.sleep(settle)
    late = sorted(r.webhook_id or "" for r in receiver.requests if scheduled(r) > instant)
    assert not late, f"slots after {instant.isoformat()} were delivered: {late}"


def slots_after(receiver: WebhookReceiver, instant: datetime, count: int = 2) -> None:
    receiver.wait_for(
        lambda rs: len({r.webhook_id for r in rs if scheduled(r) > instant}) >= count, WAIT
    )


def job_state(env: Env, job_id: str) -> tuple[bool, bool] | None:
    with psycopg.connect(env.database_url, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT enabled, deleted FROM heartbeat.job_state WHERE job_id = %s", (job_id,)
        ).fetchone()
    return (bool(row[0]), bool(row[1])) if row else None


def test_disable_pause_resume_and_delete_stop_and_restart_deliveries(
    env: Env, api: Api, receiver: WebhookReceiver
) -> None:
    user = user_id("toggle")
    api.profile(user)
    job = api.create_job(user, EVERY_SECOND, webhook_channel(receiver))
    job_id = job["job_id"]
    slots_after(receiver, datetime.now(UTC) - timedelta(seconds=5))

    # PATCH enabled=false: no slot after the change is delivered.
    response = api.sched.patch(f"/v1/heartbeats/{job_id}", json={"enabled": False})
    assert response.status_code == 200, response.text
    assert response.json()["enabled"] is False
    no_slots_after(receiver, datetime.now(UTC))

    # A slot published by hand once the heartbeat saw the change is skippedDisabled.
    wait_until(lambda: job_state(env, job_id) == (False, False), WAIT, "job_state disabled")
    manual = make_slot(webhook_channel(receiver), job_id=uuid.UUID(job_id), user_id=user)
    publish_slot_due(env.nats_url, manual.model_dump_json().encode(), manual.slot_key)
    item = api.wait_outcome(job_id, manual.slot_key)
    assert item["outcome"] == "skippedDisabled", item
    assert item["attempts"] == 0
    assert not by_key(receiver.requests, manual.slot_key)

    # Enabled again: deliveries restart.
    response = api.sched.patch(f"/v1/heartbeats/{job_id}", json={"enabled": True})
    assert response.status_code == 200, response.text
    slots_after(receiver, datetime.now(UTC))

    # :pause stops them, :resume restarts them.
    response = api.sched.post(f"/v1/users/{user}/heartbeats:pause")
    assert response.status_code == 200, response.text
    assert response.json()["heartbeats_enabled"] is False
    no_slots_after(receiver, datetime.now(UTC))
    listed = api.sched.get(f"/v1/users/{user}/heartbeats").json()["items"]
    assert [(i["job_id"], i["paused"], i["next_slot_key"]) for i in listed] == [
        (job_id, True, None)
    ]
    response = api.sched.post(f"/v1/users/{user}/heartbeats:resume")
    assert response.status_code == 200, response.text
    assert response.json()["heartbeats_enabled"] is True
    slots_after(receiver, datetime.now(UTC))

    # DELETE stops them for good.
    response = api.sched.delete(f"/v1/heartbeats/{job_id}")
    assert response.status_code == 204, response.text
    no_slots_after(receiver, datetime.now(UTC))
    shown = api.sched.get(f"/v1/heartbeats/{job_id}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["deleted"] is True
    assert api.sched.get(f"/v1/users/{user}/heartbeats").json()["items"] == []

    # Every real slot the receiver got is recorded sent, once.
    items = api.deliveries(job_id)
    sent = {i["slot_key"] for i in items if i["outcome"] == "sent"}
    assert {r.webhook_id for r in receiver.requests} <= sent
    assert len(items) == len({i["slot_key"] for i in items})


# --- 6. quiet hours -----------------------------------------------------------------------------


def test_quiet_hours_skip_slots_in_the_users_local_time(
    env: Env, api: Api, receiver: WebhookReceiver
) -> None:
    user = user_id("quiet")
    zone = "Asia/Kolkata"  # +05:30: the window covers local now, but not UTC now
    local_now = datetime.now(ZoneInfo(zone))
    quiet = {
        "start": (local_now - timedelta(hours=1)).strftime("%H:%M"),
        "end": (local_now + timedelta(hours=1)).strftime("%H:%M"),
    }
    profile = api.profile(user, zone, quiet_hours=quiet)
    assert profile["quiet_hours"] == quiet
    job = api.create_job(user, EVERY_SECOND, webhook_channel(receiver))
    items = api.wait_deliveries(job["job_id"], lambda items: len(items) >= 3)
    assert {i["outcome"] for i in items} == {"skippedQuietHours"}, items
    assert all(i["attempts"] == 0 for i in items)
    time.sleep(1.0)
    assert receiver.requests == []


# --- 7. templates -------------------------------------------------------------------------------


def test_text_that_renders_empty_is_recorded_skipped_and_never_sent(
    nats_server: LocalNats, database_url: str, log_dir: Path
) -> None:
    """An empty heartbeat is noise: it is recorded as skippedEmpty and nothing is sent."""
    heartbeat = start_service(
        "heartbeat",
        nats_url=nats_server.url,
        database_url=database_url,
        log_dir=log_dir,
        extra_env={"HEARTBEAT_TEMPLATE": "  \t "},
    )
    api = Api(heartbeat.url, heartbeat.url)
    try:
        with WebhookReceiver() as receiver:
            slot = make_slot(webhook_channel(receiver))
            publish_slot_due(nats_server.url, slot.model_dump_json().encode(), slot.slot_key)

            item = api.wait_outcome(slot.job_id, slot.slot_key)
            assert item["outcome"] == "skippedEmpty", item
            assert item["attempts"] == 0, item
            assert outcome_lines(heartbeat.log, slot.slot_key) == ["skippedEmpty"]
            time.sleep(1.0)
            assert receiver.requests == []
    finally:
        api.close()
        heartbeat.stop()


def test_invalid_template_stops_the_service_at_start_naming_the_setting(
    nats_server: LocalNats, database_url: str, log_dir: Path
) -> None:
    heartbeat = start_service(
        "heartbeat",
        nats_url=nats_server.url,
        database_url=database_url,
        log_dir=log_dir,
        extra_env={"HEARTBEAT_TEMPLATE": "Hello {name} at {local:%H:%M}"},
        wait=False,
    )
    try:
        code = heartbeat.proc.wait(60)
    finally:
        heartbeat.kill()
    assert code != 0
    output = heartbeat.log.read_text(errors="replace")
    assert "HEARTBEAT_TEMPLATE" in output, output[-2000:]


# --- 8. decision logs ---------------------------------------------------------------------------


def test_each_decision_is_one_log_line_with_the_slots_trace_id(
    env: Env, api: Api, receiver: WebhookReceiver
) -> None:
    """The scheduler's `slot due` line and the heartbeat's `heartbeat outcome` line of a
    slot carry the same trace id (made by the scheduler, carried in the message headers),
    so `grep <trace_id>` follows one slot across services, even with no trace exporter."""
    user = user_id("logs")
    api.profile(user)
    job = api.create_job(user, EVERY_SECOND, webhook_channel(receiver))
    items = api.wait_deliveries(
        job["job_id"], lambda items: sum(i["outcome"] == "sent" for i in items) >= 2
    )
    for item in (i for i in items if i["outcome"] == "sent"):
        key = item["slot_key"]
        [due] = [
            line
            for line in log_lines(env.scheduler.log)
            if line.get("decision") == "slot_due" and line.get("slot_key") == key
        ]
        [outcome] = [
            line
            for line in log_lines(env.heartbeat.log)
            if line.get("msg") == "heartbeat outcome" and line.get("slot_key") == key
        ]
        assert outcome["outcome"] == "sent", outcome
        assert outcome["job_id"] == job["job_id"] and outcome["user_id"] == user, outcome
        assert due["job_id"] == job["job_id"] and due["user_id"] == user, due
        assert len(outcome["trace_id"]) == 32 and int(outcome["trace_id"], 16), outcome
        assert outcome["trace_id"] == due["trace_id"], (due, outcome)
    # Every slot has a trace of its own.
    lines = [
        line
        for line in log_lines(env.heartbeat.log)
        if line.get("msg") == "heartbeat outcome" and line.get("job_id") == job["job_id"]
    ]
    assert len({line["trace_id"] for line in lines}) == len({line["slot_key"] for line in lines})

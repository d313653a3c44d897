"""Bad requests to the scheduler get a clear 4xx naming the field, and store nothing.

One scheduler process (real NATS, real PostgreSQL) serves the whole module; every test
counts the rows of the scheduler's event store (and its read models) before and after
its request and asserts they did not change.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from liteclaw.localservers import LocalNats, LocalPostgres
from tests.support.processes import TOKEN, ServiceProcess, start_service

AUTH = {"Authorization": f"Bearer {TOKEN}"}
TELEGRAM = {"type": "telegram", "chat_id": "12345"}
GOOD_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdefghijklmn").decode()  # 24 bytes


@dataclass
class Scheduler:
    service: ServiceProcess
    database_url: str
    events_table: str

    @property
    def url(self) -> str:
        return self.service.url

    def counts(self) -> dict[str, int]:
        """Rows in the event store and in the read models built from it."""
        with psycopg.connect(self.database_url, connect_timeout=10) as conn:
            out = {}
            for table in (self.events_table, "profiles", "jobs"):
                query = sql.SQL("SELECT count(*) FROM scheduler.{}").format(sql.Identifier(table))
                row = conn.execute(query).fetchone()
                assert row is not None
                out[table] = int(row[0])
            return out


def find_events_table(database_url: str) -> str:
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'scheduler' AND table_name LIKE '%%events'"
            ).fetchall()
        ]
    assert len(tables) == 1, f"expected one events table in schema scheduler, got {tables}"
    return tables[0]


@pytest.fixture(scope="module")
def scheduler(
    pg_server: LocalPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scheduler]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = f"postgresql://postgres@127.0.0.1:{pg_server.port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = f"postgresql://postgres@127.0.0.1:{pg_server.port}/{name}"
    base: Path = tmp_path_factory.mktemp("bad_input")
    nats = LocalNats(base / "nats")
    nats.start()
    service: ServiceProcess | None = None
    try:
        logs = base / "logs"
        logs.mkdir()
        service = start_service(
            "scheduler", nats_url=nats.url, database_url=database_url, log_dir=logs
        )
        sched = Scheduler(service, database_url, find_events_table(database_url))
        # The service's own ServiceStarted is stored before it reports ready.
        assert sched.counts()[sched.events_table] >= 1
        yield sched
    finally:
        if service is not None:
            service.stop()
        nats.stop()


@pytest.fixture
def client(scheduler: Scheduler) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=scheduler.url, timeout=30) as c:
        yield c


def request_stores_nothing(
    scheduler: Scheduler, client: httpx.Client, method: str, path: str, **kw: Any
) -> httpx.Response:
    before = scheduler.counts()
    response = client.request(method, path, **kw)
    after = scheduler.counts()
    assert after == before, f"{method} {path} -> {response.status_code} stored something"
    assert scheduler.service.proc.poll() is None, "the service died"
    return response


def assert_invalid(response: httpx.Response, field_part: str, status: int = 422) -> dict:  # type: ignore[type-arg]
    assert response.status_code == status, response.text
    body = response.json()
    errors = body["errors"]
    assert errors, body
    fields = [e["field"] for e in errors]
    assert any(field_part in f for f in fields), (field_part, body)
    for e in errors:
        assert e["reason"], body
    return body  # type: ignore[no-any-return]


def profile_for(client: httpx.Client, user: str, timezone: str = "Europe/Berlin") -> None:
    response = client.put(f"/v1/users/{user}/profile", json={"timezone": timezone}, headers=AUTH)
    assert response.status_code == 200, response.text


# --- cron and zone --------------------------------------------------------------------


@pytest.mark.parametrize(
    "cron",
    ["not a cron", "* * * *", "60 * * * *", "0 24 * * *", "0 0 30 2 *", "0 0 L * *", ""],
)
def test_invalid_cron(scheduler: Scheduler, client: httpx.Client, cron: str) -> None:
    user = f"cron-{uuid.uuid4().hex[:8]}"
    profile_for(client, user)
    response = request_stores_nothing(
        scheduler,
        client,
        "POST",
        f"/v1/users/{user}/heartbeats",
        json={"schedule_cron": cron, "channel": TELEGRAM},
        headers=AUTH,
    )
    body = assert_invalid(response, "schedule_cron")
    assert body["error"] == "invalid_request"
    assert [e["field"] for e in body["errors"]] == ["schedule_cron"]


def test_never_firing_cron_says_why(scheduler: Scheduler, client: httpx.Client) -> None:
    user = f"cron-{uuid.uuid4().hex[:8]}"
    profile_for(client, user)
    response = request_stores_nothing(
        scheduler,
        client,
        "POST",
        f"/v1/users/{user}/heartbeats",
        json={"schedule_cron": "0 0 30 2 *", "channel": TELEGRAM},
        headers=AUTH,
    )
    body = assert_invalid(response, "schedule_cron")
    assert "never fires" in body["errors"][0]["reason"]


@pytest.mark.parametrize("cron", ["0 9 1 * 1", "0 0 9 13 * FRI"])
def test_ambiguous_day_fields_are_refused(
    scheduler: Scheduler, client: httpx.Client, cron: str
) -> None:
    """Restricting both day-of-month and day-of-week makes cron fire when *either*
    matches (Vixie semantics), which is rarely meant: refused, naming the field."""
    user = f"cron-{uuid.uuid4().hex[:8]}"
    profile_for(client, user)
    response = request_stores_nothing(
        scheduler,
        client,
        "POST",
        f"/v1/users/{user}/heartbeats",
        json={"schedule_cron": cron, "channel": TELEGRAM},
        headers=AUTH,
    )
    body = assert_invalid(response, "schedule_cron")
    assert "ambiguous" in body["errors"][0]["reason"], body


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus_Mons", "+02:00", "-05:00", "UTC+2", "", " Europe/Berlin"]
)
def test_unknown_zone(scheduler: Scheduler, client: httpx.Client, zone: str) -> None:
    response = request_stores_nothing(
        scheduler,
        client,
        "PUT",
        f"/v1/users/zone-{uuid.uuid4().hex[:8]}/profile",
        json={"timezone": zone},
        headers=AUTH,
    )
    body = assert_invalid(response, "timezone")
    assert [e["field"] for e in body["errors"]] == ["timezone"]


def test_unknown_zone_does_not_change_an_existing_profile(
    scheduler: Scheduler, client: httpx.Client
) -> None:
    user = f"zone-{uuid.uuid4().hex[:8]}"
    profile_for(client, user, "Europe/London")
    response = request_stores_nothing(
        scheduler,
        client,
        "PUT",
        f"/v1/users/{user}/profile",
        json={"timezone": "+01:00"},
        headers=AUTH,
    )
    assert_invalid(response, "timezone")


# --- bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{bad", b'{"timezone": "UTC"', b"", b"\xff\xfe"])
def test_malformed_json(scheduler: Scheduler, client: httpx.Client, raw: bytes) -> None:
    response = request_stores_nothing(
        scheduler,
        client,
        "PUT",
        "/v1/users/json-user/profile",
        content=raw,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request"
    assert body["errors"] and all(e["reason"] for e in body["errors"])
    if raw:
        assert body["errors"][0]["reason"].startswith("malformed JSON"), body


def test_malformed_json_names_the_body(scheduler: Scheduler, client: httpx.Client) -> None:
    response = client.put(
        "/v1/users/json-user/profile",
        content=b"{bad",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["body"]


@pytest.mark.parametrize("payload", [[1, 2], "Europe/Berlin", 42, None, True])
def test_body_not_an_object(scheduler: Scheduler, client: httpx.Client, payload: Any) -> None:
    for method, path in (
        ("PUT", "/v1/users/obj-user/profile"),
        ("POST", "/v1/users/obj-user/heartbeats"),
    ):
        response = request_stores_nothing(
            scheduler, client, method, path, json=payload, headers=AUTH
        )
        body = assert_invalid(response, "body")
        assert body["error"] == "invalid_request"
        assert "JSON object" in body["errors"][0]["reason"] or payload is None, body


def test_unknown_and_missing_fields(scheduler: Scheduler, client: httpx.Client) -> None:
    response = request_stores_nothing(
        scheduler,
        client,
        "PUT",
        "/v1/users/extra-user/profile",
        json={"timezone": "UTC", "tz": "UTC"},
        headers=AUTH,
    )
    assert_invalid(response, "tz")
    response = request_stores_nothing(
        scheduler, client, "PUT", "/v1/users/extra-user/profile", json={}, headers=AUTH
    )
    assert_invalid(response, "timezone")


def test_bad_user_id_in_path(scheduler: Scheduler, client: httpx.Client) -> None:
    response = request_stores_nothing(
        scheduler,
        client,
        "PUT",
        "/v1/users/has%20space/profile",
        json={"timezone": "UTC"},
        headers=AUTH,
    )
    assert_invalid(response, "user_id")


# --- channels -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [
        "not base64 at all!",  # neither whsec_ nor base64
        "whsec_***not-base64***",
        "whsec_" + base64.b64encode(b"short1").decode(),  # base64, but only 6 bytes
        "whsec_",
        "",
    ],
)
def test_bad_webhook_secret(scheduler: Scheduler, client: httpx.Client, secret: str) -> None:
    user = f"hook-{uuid.uuid4().hex[:8]}"
    profile_for(client, user)
    response = request_stores_nothing(
        scheduler,
        client,
        "POST",
        f"/v1/users/{user}/heartbeats",
        json={
            "schedule_cron": "0 9 * * *",
            "channel": {"type": "webhook", "url": "https://example.test/hook", "secret": secret},
        },
        headers=AUTH,
    )
    body = assert_invalid(response, "secret")
    # The secret itself is never echoed back.
    if len(secret) >= 8:
        assert secret not in response.text, body


def test_bad_webhook_url_and_channel_type(scheduler: Scheduler, client: httpx.Client) -> None:
    user = f"hook-{uuid.uuid4().hex[:8]}"
    profile_for(client, user)
    path = f"/v1/users/{user}/heartbeats"
    response = request_stores_nothing(
        scheduler,
        client,
        "POST",
        path,
        json={
            "schedule_cron": "0 9 * * *",
            "channel": {"type": "webhook", "url": "ftp://example.test", "secret": GOOD_SECRET},
        },
        headers=AUTH,
    )
    assert_invalid(response, "url")
    response = request_stores_nothing(
        scheduler,
        client,
        "POST",
        path,
        json={"schedule_cron": "0 9 * * *", "channel": {"type": "carrier-pigeon"}},
        headers=AUTH,
    )
    assert_invalid(response, "channel")


def test_good_webhook_secret_is_accepted(scheduler: Scheduler, client: httpx.Client) -> None:
    """Control: the same request with a valid secret is stored (so the checks above fail
    for the reason they name, not for something else)."""
    user = f"hook-{uuid.uuid4().hex[:8]}"
    profile_for(client, user)
    before = scheduler.counts()
    response = client.post(
        f"/v1/users/{user}/heartbeats",
        json={
            "schedule_cron": "0 9 * * *",
            "channel": {
                "type": "webhook",
                "url": "https://example.test/hook",
                "secret": GOOD_SECRET,
            },
        },
        headers=AUTH,
    )
    assert response.status_code == 201, response.text
    assert "secret" not in response.json()["channel"]
    after = scheduler.counts()
    assert after[scheduler.events_table] == before[scheduler.events_table] + 1
    assert after["jobs"] == before["jobs"] + 1


@pytest.mark.parametrize("size", [16, 17, 32])
def test_padded_webhook_secret_is_accepted(
    scheduler: Scheduler, client: httpx.Client, size: int
) -> None:
    """Regression: base64 with '=' padding (16, 17, 32 random bytes) is a valid secret."""
    user = f"hook-{uuid.uuid4().hex[:8]}"
    profile_for(client, user)
    secret = "whsec_" + base64.b64encode(bytes(range(size))).decode()
    assert secret.endswith("=")
    response = client.post(
        f"/v1/users/{user}/heartbeats",
        json={
            "schedule_cron": "0 9 * * *",
            "channel": {"type": "webhook", "url": "https://example.test/hook", "secret": secret},
        },
        headers=AUTH,
    )
    assert response.status_code == 201, response.text


# --- auth -------------------------------------------------------------------------------

V1_ROUTES = [
    ("PUT", "/v1/users/auth-user/profile", {"timezone": "UTC"}),
    ("POST", "/v1/users/auth-user/heartbeats", {"schedule_cron": "0 9 * * *", "channel": TELEGRAM}),
    ("GET", "/v1/users/auth-user/heartbeats", None),
    ("GET", f"/v1/heartbeats/{uuid.uuid4()}", None),
    # Invalid bodies too: authentication comes before validation, so nothing leaks.
    ("PUT", "/v1/users/auth-user/profile", {"timezone": "+02:00"}),
    ("POST", "/v1/users/auth-user/heartbeats", {"schedule_cron": "nope"}),
]

BAD_AUTH = {
    "missing": {},
    "wrong token": {"Authorization": "Bearer wrong-token"},
    "token prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "empty bearer": {"Authorization": "Bearer"},
    "basic scheme": {"Authorization": f"Basic {TOKEN}"},
    "bare token": {"Authorization": TOKEN},
}


@pytest.mark.parametrize("auth", list(BAD_AUTH), ids=list(BAD_AUTH))
def test_v1_routes_need_the_bearer_token(
    scheduler: Scheduler, client: httpx.Client, auth: str
) -> None:
    for method, path, payload in V1_ROUTES:
        response = request_stores_nothing(
            scheduler, client, method, path, json=payload, headers=BAD_AUTH[auth]
        )
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers.get("www-authenticate") == "Bearer"
        assert "bearer" in response.json()["detail"].lower()


def test_health_routes_need_no_token(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"
    assert client.get("/metrics").status_code == 200


# --- use-case errors ----------------------------------------------------------------------


def test_job_for_user_without_profile(scheduler: Scheduler, client: httpx.Client) -> None:
    user = f"noprofile-{uuid.uuid4().hex[:8]}"
    response = request_stores_nothing(
        scheduler,
        client,
        "POST",
        f"/v1/users/{user}/heartbeats",
        json={"schedule_cron": "0 9 * * *", "channel": TELEGRAM},
        headers=AUTH,
    )
    body = assert_invalid(response, "user_id", status=409)
    assert body["error"] == "profile_required"
    assert [e["field"] for e in body["errors"]] == ["user_id"]
    assert "profile" in body["reason"]


def test_unknown_job_and_bad_job_id(scheduler: Scheduler, client: httpx.Client) -> None:
    response = request_stores_nothing(
        scheduler, client, "GET", f"/v1/heartbeats/{uuid.uuid4()}", headers=AUTH
    )
    assert_invalid(response, "job_id", status=404)
    response = request_stores_nothing(
        scheduler, client, "GET", "/v1/heartbeats/not-a-uuid", headers=AUTH
    )
    assert_invalid(response, "job_id")

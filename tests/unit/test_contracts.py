"""The event models themselves: wire round trips, validation and forward compatibility."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest
from pydantic import ValidationError

from shared.contracts import (
    ALL_EVENTS,
    SERVICES,
    ChannelSummary,
    Event,
    HeartbeatFailed,
    HeartbeatJobCreated,
    HeartbeatJobDeleted,
    HeartbeatJobUpdated,
    HeartbeatSent,
    HeartbeatSkipped,
    ProfileUpdated,
    QuietHours,
    ServiceStarted,
    SlotDue,
    SlotsMissed,
    TelegramChannel,
    WebhookChannel,
    parse_event,
)

JOB = UUID("12345678-1234-5678-1234-567812345678")
USER = "user-1"
WHEN = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
SECRET = "whsec_" + base64.b64encode(bytes(range(24))).decode()


def slot_due(**changes: Any) -> SlotDue:
    fields: dict[str, Any] = {
        "slot_key": f"{JOB}:7:2026-03-29T01:30:00Z",
        "job_id": JOB,
        "user_id": USER,
        "job_type": "heartbeat",
        "schedule_version": 7,
        "scheduled_for": WHEN,
        "local_time": "2026-03-29T03:30:00+02:00",
        "timezone": "Europe/Berlin",
        "channel": WebhookChannel(url="https://example.test/hook", secret=SECRET),
        "quiet_hours": QuietHours(start="22:00", end="07:00"),
    }
    return SlotDue(**(fields | changes))


def samples() -> list[Event]:
    """One populated instance of every event type."""
    summary = ChannelSummary(type="telegram", chat_id="42")
    outcome: dict[str, Any] = {
        "slot_key": "k",
        "job_id": JOB,
        "user_id": USER,
        "scheduled_for": WHEN,
        "attempts": 2,
    }
    return [
        ServiceStarted(service="scheduler", instance_id="i-1", pid=123, version="0.1.0"),
        ProfileUpdated(
            user_id=USER,
            timezone="Europe/Berlin",
            heartbeats_enabled=True,
            quiet_hours=QuietHours(start="22:00", end="07:00"),
        ),
        HeartbeatJobCreated(
            job_id=JOB,
            user_id=USER,
            job_type="heartbeat",
            schedule_cron="*/5 * * * *",
            channel=summary,
        ),
        HeartbeatJobUpdated(job_id=JOB, user_id=USER, change="schedule", schedule_cron="0 9 * * *"),
        HeartbeatJobDeleted(job_id=JOB, user_id=USER),
        slot_due(),
        slot_due(channel=TelegramChannel(chat_id="42"), quiet_hours=None),
        SlotsMissed(
            job_id=JOB,
            user_id=USER,
            count=3,
            first_slot_key="a",
            last_slot_key="c",
            first_scheduled_for=WHEN,
            last_scheduled_for=WHEN + timedelta(minutes=10),
        ),
        HeartbeatSent(**outcome),
        HeartbeatFailed(**outcome, error_class="Timeout", error="no answer within 10s"),
        HeartbeatSkipped(**outcome, reason="skippedDuplicate"),
    ]


SAMPLES = samples()


def test_every_event_type_has_a_sample() -> None:
    assert {type(event) for event in SAMPLES} == set(ALL_EVENTS)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda event: type(event).__name__)
def test_round_trip_through_parse_event(event: Event) -> None:
    body = event.model_dump_json()
    for wire in (body, body.encode()):
        parsed = parse_event(wire)
        assert type(parsed) is type(event)
        assert parsed == event


@pytest.mark.parametrize("model", ALL_EVENTS, ids=lambda model: model.__name__)
def test_subject_is_liteclaw_service_name(model: type[Event]) -> None:
    _, service, name = model.subject().split(".")
    assert model.subject().startswith("liteclaw.")
    assert service in (*SERVICES, "*")
    assert name == model.NAME


# --- webhook secrets ------------------------------------------------------------------


def whsec(size: int) -> str:
    return "whsec_" + base64.b64encode(bytes(range(size))).decode()


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(whsec(18), id="18-bytes-unpadded"),
        pytest.param(whsec(24), id="24-bytes-unpadded"),
        pytest.param(whsec(16), id="16-bytes-padded"),
        pytest.param(whsec(32), id="32-bytes-padded"),
    ],
)
def test_webhook_secret_accepts_whsec_base64_of_16_bytes_or_more(secret: str) -> None:
    assert WebhookChannel(url="https://example.test/", secret=secret).secret == secret


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(whsec(15), id="15-bytes"),
        pytest.param("whsec_not*base64!", id="not-base64"),
        pytest.param("whsec_", id="empty"),
        pytest.param(base64.b64encode(bytes(range(24))).decode(), id="no-whsec-prefix"),
    ],
)
def test_webhook_secret_rejects_anything_else(secret: str) -> None:
    with pytest.raises(ValidationError, match="secret"):
        WebhookChannel(url="https://example.test/", secret=secret)


# --- validation -----------------------------------------------------------------------


def test_scheduled_for_is_normalised_to_utc() -> None:
    berlin_summer = timezone(timedelta(hours=2))
    event = slot_due(scheduled_for=datetime(2026, 3, 29, 3, 30, tzinfo=berlin_summer))
    assert event.scheduled_for == WHEN
    assert event.scheduled_for.tzinfo is UTC
    parsed = parse_event(event.model_dump_json())
    assert isinstance(parsed, SlotDue)
    assert parsed.scheduled_for.tzinfo is UTC


def test_scheduled_for_without_offset_is_rejected() -> None:
    with pytest.raises(ValidationError, match="scheduled_for"):
        slot_due(scheduled_for=datetime(2026, 3, 29, 1, 30))


def test_unknown_fields_are_ignored() -> None:
    event = slot_due(channel=TelegramChannel(chat_id="42"))
    body = event.model_dump(mode="json")
    body["added_by_a_newer_producer"] = {"anything": [1, 2]}
    parsed = parse_event(json.dumps(body))
    assert parsed == event
    assert "added_by_a_newer_producer" not in parsed.model_dump()


def test_unknown_fields_in_a_channel_summary_are_ignored() -> None:
    created = next(event for event in SAMPLES if isinstance(event, HeartbeatJobCreated))
    body = created.model_dump(mode="json")
    body["channel"]["added_later"] = True
    assert parse_event(json.dumps(body)) == created


@pytest.mark.parametrize("wrong", ["NoSuchEvent", "HeartbeatFailed", "slotdue", None])
def test_wrong_type_is_rejected(wrong: str | None) -> None:
    body = slot_due().model_dump(mode="json") | {"type": wrong}
    with pytest.raises(ValidationError):
        parse_event(json.dumps(body))


def test_missing_type_is_rejected() -> None:
    body = slot_due().model_dump(mode="json")
    del body["type"]
    with pytest.raises(ValidationError):
        parse_event(json.dumps(body))


def test_a_model_rejects_another_models_type() -> None:
    body = slot_due().model_dump(mode="json") | {"type": "HeartbeatSent"}
    with pytest.raises(ValidationError, match="type"):
        SlotDue.model_validate(body)

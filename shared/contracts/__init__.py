"""The event contracts: the only models that cross NATS.

One pydantic model per event. Each carries ``type``, ``schema_version``, ``event_id`` and
``occurred_at``; W3C trace context travels in NATS headers, not in the body. Subjects are
``liteclaw.<service>.<event>``, and each producing service owns one JetStream stream.
JSON Schema for every model is committed under ``schemas/`` (``make contracts``) and a
test fails when a committed schema changes incompatibly.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, field_validator

SERVICES = ("auth", "claims", "heartbeat", "scheduler", "monitor")
DLQ_STREAM = "LITECLAW_DLQ"
DLQ_SUBJECT_PREFIX = "liteclaw.dlq"


def stream_name(service: str) -> str:
    return f"LITECLAW_{service.upper()}"


def stream_subjects(service: str) -> list[str]:
    return [f"liteclaw.{service}.>"]


def dlq_subject(service: str) -> str:
    return f"{DLQ_SUBJECT_PREFIX}.{service}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every event on the wire. Unknown fields are ignored so producers can add
    optional fields without breaking older consumers."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    SERVICE: ClassVar[str]
    NAME: ClassVar[str]

    schema_version: int = 1
    event_id: UUID = Field(default_factory=uuid4)
    occurred_at: AwareDatetime = Field(default_factory=_utcnow)

    @classmethod
    def subject(cls) -> str:
        return f"liteclaw.{cls.SERVICE}.{cls.NAME}"


# --- channels -------------------------------------------------------------------------


class WebhookChannel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    type: Literal["webhook"] = "webhook"
    url: Annotated[str, Field(pattern=r"^https?://", max_length=2048)]
    secret: Annotated[
        str,
        Field(
            min_length=8,
            max_length=512,
            description="Standard Webhooks signing secret: `whsec_` + base64 of >= 16 bytes.",
        ),
    ]

    @field_validator("secret")
    @classmethod
    def _base64_secret(cls, value: str) -> str:
        if not value.startswith("whsec_"):
            raise ValueError("must be 'whsec_' followed by base64 (Standard Webhooks)")
        raw = value.removeprefix("whsec_")
        try:
            decoded = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be 'whsec_' followed by base64 (Standard Webhooks)") from None
        if len(decoded) < 16:
            raise ValueError("must decode to at least 16 bytes")
        return value


class TelegramChannel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    type: Literal["telegram"] = "telegram"
    chat_id: Annotated[str, Field(min_length=1, max_length=64)]


Channel = Annotated[WebhookChannel | TelegramChannel, Field(discriminator="type")]


class ChannelSummary(BaseModel):
    """A channel as other services see it in job events: no secrets."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    type: Literal["webhook", "telegram"]
    url: str | None = None
    chat_id: str | None = None


# --- every service --------------------------------------------------------------------


class ServiceStarted(Event):
    SERVICE: ClassVar[str] = "*"
    NAME: ClassVar[str] = "service_started"
    type: Literal["ServiceStarted"] = "ServiceStarted"
    service: str
    instance_id: str
    pid: int
    version: str

    @classmethod
    def subject_for(cls, service: str) -> str:
        return f"liteclaw.{service}.{cls.NAME}"


# --- scheduler ------------------------------------------------------------------------


class QuietHours(BaseModel):
    """A local wall-clock window (HH:MM, may wrap midnight) with no heartbeats."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    start: Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    end: Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]


class ProfileUpdated(Event):
    SERVICE: ClassVar[str] = "scheduler"
    NAME: ClassVar[str] = "profile_updated"
    type: Literal["ProfileUpdated"] = "ProfileUpdated"
    user_id: str
    timezone: str
    heartbeats_enabled: bool
    quiet_hours: QuietHours | None = None


class HeartbeatJobCreated(Event):
    SERVICE: ClassVar[str] = "scheduler"
    NAME: ClassVar[str] = "heartbeat_job_created"
    type: Literal["HeartbeatJobCreated"] = "HeartbeatJobCreated"
    job_id: UUID
    user_id: str
    job_type: str
    schedule_cron: str
    channel: ChannelSummary
    enabled: bool = True


class HeartbeatJobUpdated(Event):
    """One change to a job; only the fields of that change are set."""

    SERVICE: ClassVar[str] = "scheduler"
    NAME: ClassVar[str] = "heartbeat_job_updated"
    type: Literal["HeartbeatJobUpdated"] = "HeartbeatJobUpdated"
    job_id: UUID
    user_id: str
    change: Literal["schedule", "channel", "enabled", "disabled"]
    schedule_cron: str | None = None
    schedule_version: int | None = None
    channel: ChannelSummary | None = None
    enabled: bool | None = None


class HeartbeatJobDeleted(Event):
    SERVICE: ClassVar[str] = "scheduler"
    NAME: ClassVar[str] = "heartbeat_job_deleted"
    type: Literal["HeartbeatJobDeleted"] = "HeartbeatJobDeleted"
    job_id: UUID
    user_id: str


class SlotDue(Event):
    """A heartbeat slot came due. Published with ``Nats-Msg-Id`` = ``slot_key``."""

    SERVICE: ClassVar[str] = "scheduler"
    NAME: ClassVar[str] = "slot_due"
    type: Literal["SlotDue"] = "SlotDue"
    slot_key: Annotated[str, Field(min_length=1, max_length=256)]
    job_id: UUID
    user_id: str
    job_type: str
    schedule_version: int
    scheduled_for: AwareDatetime = Field(description="The slot's instant (UTC).")
    local_time: str = Field(description="The slot's local date-time with its UTC offset.")
    timezone: str
    channel: Channel
    quiet_hours: QuietHours | None = None

    @field_validator("scheduled_for")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)


class SlotsMissed(Event):
    """Slots of one job that came due while no scheduler ran, older than the misfire
    grace window: recorded ``skippedMissed``, one event per job and outage."""

    SERVICE: ClassVar[str] = "scheduler"
    NAME: ClassVar[str] = "slots_missed"
    type: Literal["SlotsMissed"] = "SlotsMissed"
    reason: Literal["skippedMissed"] = "skippedMissed"
    job_id: UUID
    user_id: str
    count: int
    count_is_lower_bound: bool = False
    first_slot_key: str
    last_slot_key: str
    first_scheduled_for: AwareDatetime
    last_scheduled_for: AwareDatetime


# --- heartbeat ------------------------------------------------------------------------


class _HeartbeatOutcome(Event):
    SERVICE: ClassVar[str] = "heartbeat"
    slot_key: str
    job_id: UUID
    user_id: str
    scheduled_for: AwareDatetime
    attempts: int = 0


class HeartbeatSent(_HeartbeatOutcome):
    NAME: ClassVar[str] = "heartbeat_sent"
    type: Literal["HeartbeatSent"] = "HeartbeatSent"


class HeartbeatFailed(_HeartbeatOutcome):
    NAME: ClassVar[str] = "heartbeat_failed"
    type: Literal["HeartbeatFailed"] = "HeartbeatFailed"
    error_class: str
    error: str


class HeartbeatSkipped(_HeartbeatOutcome):
    NAME: ClassVar[str] = "heartbeat_skipped"
    type: Literal["HeartbeatSkipped"] = "HeartbeatSkipped"
    reason: str = Field(description="skippedNotDue, skippedDuplicate, skippedDisabled, ...")


# --- dead letters ---------------------------------------------------------------------


class DeadLetter(BaseModel):
    """What a consumer sends to ``liteclaw.dlq.<service>`` when it gives up on a message."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    type: Literal["DeadLetter"] = "DeadLetter"
    service: str
    subject: str
    reason: str
    deliveries: int
    payload: str = Field(description="The original body, as text (truncated to 64 KiB).")
    occurred_at: AwareDatetime = Field(default_factory=_utcnow)


ALL_EVENTS: tuple[type[Event], ...] = (
    ServiceStarted,
    ProfileUpdated,
    HeartbeatJobCreated,
    HeartbeatJobUpdated,
    HeartbeatJobDeleted,
    SlotDue,
    SlotsMissed,
    HeartbeatSent,
    HeartbeatFailed,
    HeartbeatSkipped,
)

AnyEvent = Annotated[
    ServiceStarted
    | ProfileUpdated
    | HeartbeatJobCreated
    | HeartbeatJobUpdated
    | HeartbeatJobDeleted
    | SlotDue
    | SlotsMissed
    | HeartbeatSent
    | HeartbeatFailed
    | HeartbeatSkipped,
    Field(discriminator="type"),
]

_any_event: TypeAdapter[Any] = TypeAdapter(AnyEvent)


def parse_event(body: bytes | str) -> Event:
    """Parse any contract event by its ``type``; raises ``pydantic.ValidationError``."""
    result: Event = _any_event.validate_json(body)
    return result

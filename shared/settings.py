"""Process configuration, read from the environment by pydantic-settings.

Nothing here is read at import time: each service's bootstrap calls its settings class.
Every field is documented in README.md ("Settings"); keep the two in step.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ServiceSettings(BaseSettings):
    """Settings every service shares."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    nats_url: str = Field(
        "nats://127.0.0.1:4222",
        description="NATS server URL(s); comma-separated for a cluster.",
    )
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/liteclaw",
        description="PostgreSQL URL; each service uses its own schema in this database.",
    )
    liteclaw_api_token: SecretStr = Field(
        ..., description="Bearer token every /v1 HTTP route requires."
    )
    service_host: str = Field("127.0.0.1", description="HTTP listen address.")
    service_port: int = Field(0, description="HTTP listen port (0: the service's default).")
    instance_id: str = Field(
        default_factory=_default_instance_id,
        description="Names this process in events, logs and consumer state.",
    )
    stream_replicas: int = Field(
        1, ge=1, le=5, description="JetStream stream replicas (3 in a cluster)."
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP endpoint (e.g. http://127.0.0.1:4318); unset: no export."
    )
    log_level: str = Field("INFO", description="Python log level.")
    relay_interval: float = Field(
        0.5, gt=0, description="Seconds between relay polls of the event store when idle."
    )
    shutdown_grace: float = Field(
        10.0,
        gt=0,
        description="Seconds in-flight work may take to finish and ack on SIGTERM; what is "
        "still unacked then is redelivered to another instance.",
    )

    @field_validator("nats_url")
    @classmethod
    def _nats_urls(cls, value: str) -> str:
        if not all(u.strip().startswith(("nats://", "tls://")) for u in value.split(",")):
            raise ValueError("every NATS_URL entry must start with nats:// or tls://")
        return value

    @property
    def nats_servers(self) -> list[str]:
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]


class SchedulerSettings(ServiceSettings):
    heartbeat_job_type: str = Field(
        "heartbeat", description="Comma-separated job types this scheduler instance emits."
    )
    tick_max_sleep: float = Field(
        1.0, gt=0, le=60, description="Longest the scheduler sleeps between due-index checks."
    )
    tick_batch: int = Field(2000, ge=1, description="Due slots claimed per transaction.")
    misfire_grace: timedelta = Field(
        timedelta(minutes=15),
        description="Missed slots younger than this are caught up (latest one per job); "
        "older ones are recorded skippedMissed. Seconds or ISO 8601 (PT15M).",
    )
    slot_stagger_max: float = Field(
        0.0,
        ge=0,
        le=300,
        description="Spread each job's firing by a deterministic offset in [0, this) seconds "
        "(0: off). The slot key and the slot's nominal time do not change.",
    )

    @field_validator("misfire_grace", mode="before")
    @classmethod
    def _plain_seconds(cls, value: object) -> object:
        # MISFIRE_GRACE=900 means seconds, like every other duration setting here.
        if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
            return float(value)
        return value

    @property
    def job_types(self) -> list[str]:
        return [t.strip() for t in self.heartbeat_job_type.split(",") if t.strip()]


class HeartbeatSettings(ServiceSettings):
    delivery_concurrency: int = Field(256, ge=1, description="Deliveries in flight per instance.")
    delivery_timeout: float = Field(
        10.0, gt=0, description="Seconds one delivery attempt may take."
    )
    delivery_deadline: float = Field(
        60.0, gt=0, description="Seconds all attempts of one delivery may take."
    )
    max_deliver: int = Field(
        5,
        ge=1,
        description="Deliveries of an unparseable SlotDue before it is dead-lettered. "
        "(Database outages are retried without limit: the slot must not be lost.)",
    )
    telegram_api_base: str = Field(
        "https://api.telegram.org", description="Telegram Bot API base URL."
    )
    telegram_bot_token: SecretStr | None = Field(None, description="Telegram bot token.")
    heartbeat_template: str = Field(
        "Lite Claw heartbeat for {local:%A %d %B %Y, %H:%M} ({timezone})",
        description="Message text; str.format fields: local (the slot's local datetime), "
        "timezone, user_id, job_type. A text that renders empty is not sent (skippedEmpty).",
    )

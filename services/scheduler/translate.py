"""Domain events → wire contracts. Only contracts cross NATS."""

from __future__ import annotations

from eventsourcing.domain import DomainEventProtocol

from services.scheduler.domain import HeartbeatJob, Profile
from shared.contracts import ChannelSummary, Event, HeartbeatJobCreated, ProfileUpdated


def _summary(channel: dict[str, object]) -> ChannelSummary:
    return ChannelSummary.model_validate({k: v for k, v in channel.items() if k != "secret"})


def to_contract(event: DomainEventProtocol) -> Event | None:
    if isinstance(event, Profile.Registered | Profile.Changed):
        return ProfileUpdated(
            user_id=event.user_id,
            timezone=event.timezone,
            heartbeats_enabled=event.heartbeats_enabled,
            occurred_at=event.timestamp,
        )
    if isinstance(event, HeartbeatJob.Created):
        return HeartbeatJobCreated(
            job_id=event.originator_id,
            user_id=event.user_id,
            job_type=event.job_type,
            schedule_cron=event.schedule_cron,
            channel=_summary(event.channel),
            occurred_at=event.timestamp,
        )
    return None

"""Domain events → wire contracts. Only contracts cross NATS."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol

from services.scheduler.domain import HeartbeatJob, MissedSlots, Profile
from shared.contracts import (
    ChannelSummary,
    Event,
    HeartbeatJobCreated,
    HeartbeatJobDeleted,
    HeartbeatJobUpdated,
    ProfileUpdated,
    QuietHours,
    SlotsMissed,
)


def _summary(channel: dict[str, Any]) -> ChannelSummary:
    # Secrets never leave the scheduler in job events.
    return ChannelSummary.model_validate({k: v for k, v in channel.items() if k != "secret"})


def to_contract(e: DomainEventProtocol, event_id: UUID) -> Event | None:
    meta = {"occurred_at": e.timestamp, "event_id": event_id}  # type: ignore[attr-defined]
    if isinstance(e, Profile.Registered | Profile.Changed):
        return ProfileUpdated(
            user_id=e.user_id,
            timezone=e.timezone,
            heartbeats_enabled=e.heartbeats_enabled,
            quiet_hours=QuietHours(**e.quiet_hours) if e.quiet_hours else None,
            **meta,
        )
    if isinstance(e, HeartbeatJob.Created):
        return HeartbeatJobCreated(
            job_id=e.originator_id,
            user_id=e.user_id,
            job_type=e.job_type,
            schedule_cron=e.schedule_cron,
            channel=_summary(e.channel),
            **meta,
        )
    common = {"job_id": e.originator_id, **meta}
    if isinstance(e, HeartbeatJob.ScheduleChanged):
        return HeartbeatJobUpdated(
            **common,
            user_id=e.user_id,
            change="schedule",
            schedule_cron=e.schedule_cron,
            schedule_version=e.schedule_version,
        )
    if isinstance(e, HeartbeatJob.ChannelChanged):
        return HeartbeatJobUpdated(
            **common, user_id=e.user_id, change="channel", channel=_summary(e.channel)
        )
    if isinstance(e, HeartbeatJob.Enabled):
        return HeartbeatJobUpdated(**common, user_id=e.user_id, change="enabled", enabled=True)
    if isinstance(e, HeartbeatJob.Disabled):
        return HeartbeatJobUpdated(**common, user_id=e.user_id, change="disabled", enabled=False)
    if isinstance(e, HeartbeatJob.Deleted):
        return HeartbeatJobDeleted(**common, user_id=e.user_id)
    if isinstance(e, MissedSlots.Recorded):
        return SlotsMissed(
            job_id=e.job_id,
            user_id=e.user_id,
            count=e.count,
            count_is_lower_bound=e.count_is_lower_bound,
            first_slot_key=e.first_slot_key,
            last_slot_key=e.last_slot_key,
            first_scheduled_for=e.first_scheduled_for,
            last_scheduled_for=e.last_scheduled_for,
            **meta,
        )
    return None

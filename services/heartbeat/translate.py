"""Domain events → wire contracts."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import DomainEventProtocol

from services.heartbeat.domain import Delivery
from shared.contracts import Event, HeartbeatFailed, HeartbeatSent, HeartbeatSkipped


def to_contract(event: DomainEventProtocol, event_id: UUID) -> Event | None:
    if isinstance(event, Delivery.Sent):
        return HeartbeatSent(
            event_id=event_id,
            slot_key=event.slot_key,
            job_id=event.job_id,
            user_id=event.user_id,
            scheduled_for=event.scheduled_for,
            attempts=event.attempts,
            occurred_at=event.timestamp,
        )
    if isinstance(event, Delivery.Failed):
        return HeartbeatFailed(
            event_id=event_id,
            slot_key=event.slot_key,
            job_id=event.job_id,
            user_id=event.user_id,
            scheduled_for=event.scheduled_for,
            attempts=event.attempts,
            error_class=event.error_class,
            error=event.error,
            occurred_at=event.timestamp,
        )
    if isinstance(event, Delivery.Skipped):
        return HeartbeatSkipped(
            event_id=event_id,
            slot_key=event.slot_key,
            job_id=event.job_id,
            user_id=event.user_id,
            scheduled_for=event.scheduled_for,
            attempts=event.attempts,
            reason=event.outcome,
            occurred_at=event.timestamp,
        )
    return None

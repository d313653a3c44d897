"""The durable record of a slot's outcome.

A ``Delivery`` has a deterministic id (uuid5 of the slot key). Saving a second one for
the same slot raises ``IntegrityError`` in the event store: that is the durable dedup,
and it holds long after JetStream's duplicate window has passed.
"""

from __future__ import annotations

from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

_NS = uuid5(NAMESPACE_URL, "https://liteclaw.ai/heartbeat/slot")

# The runbook's log names, verbatim.
SENT = "sent"
FAILED = "failed"
SKIPPED_NOT_DUE = "skippedNotDue"
SKIPPED_DUPLICATE = "skippedDuplicate"
# Further final outcomes, each with the reason in its name.
SKIPPED_DISABLED = "skippedDisabled"
SKIPPED_QUIET_HOURS = "skippedQuietHours"
SKIPPED_EMPTY = "skippedEmpty"


def delivery_id(slot_key: str) -> UUID:
    return uuid5(_NS, slot_key)


class Delivery(Aggregate):
    class Sent(Aggregate.Created):
        slot_key: str
        job_id: UUID
        user_id: str
        scheduled_for: datetime
        attempts: int
        outcome: str

    class Failed(Aggregate.Created):
        slot_key: str
        job_id: UUID
        user_id: str
        scheduled_for: datetime
        attempts: int
        outcome: str
        error_class: str
        error: str

    class Skipped(Aggregate.Created):
        slot_key: str
        job_id: UUID
        user_id: str
        scheduled_for: datetime
        attempts: int
        outcome: str

    def __init__(
        self,
        slot_key: str,
        job_id: UUID,
        user_id: str,
        scheduled_for: datetime,
        attempts: int,
        outcome: str,
        error_class: str = "",
        error: str = "",
    ) -> None:
        self.slot_key = slot_key
        self.job_id = job_id
        self.user_id = user_id
        self.scheduled_for = scheduled_for
        self.attempts = attempts
        self.outcome = outcome
        self.error_class = error_class
        self.error = error

    @classmethod
    def sent(
        cls, slot_key: str, job_id: UUID, user_id: str, scheduled_for: datetime, attempts: int
    ) -> Delivery:
        return cls._create(
            cls.Sent,
            id=delivery_id(slot_key),
            slot_key=slot_key,
            job_id=job_id,
            user_id=user_id,
            scheduled_for=scheduled_for,
            attempts=attempts,
            outcome=SENT,
        )

    @classmethod
    def failed(
        cls,
        slot_key: str,
        job_id: UUID,
        user_id: str,
        scheduled_for: datetime,
        attempts: int,
        error_class: str,
        error: str,
    ) -> Delivery:
        return cls._create(
            cls.Failed,
            id=delivery_id(slot_key),
            slot_key=slot_key,
            job_id=job_id,
            user_id=user_id,
            scheduled_for=scheduled_for,
            attempts=attempts,
            outcome=FAILED,
            error_class=error_class,
            error=error,
        )

    @classmethod
    def skipped(
        cls, slot_key: str, job_id: UUID, user_id: str, scheduled_for: datetime, reason: str
    ) -> Delivery:
        return cls._create(
            cls.Skipped,
            id=delivery_id(slot_key),
            slot_key=slot_key,
            job_id=job_id,
            user_id=user_id,
            scheduled_for=scheduled_for,
            attempts=0,
            outcome=reason,
        )

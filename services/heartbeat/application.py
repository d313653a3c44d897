"""Heartbeat use cases on an eventsourcing Application."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.application import Application

from services.heartbeat.domain import delivery_id


class HeartbeatApplication(Application[UUID]):
    name = "heartbeat"

    def has_outcome(self, slot_key: str) -> bool:
        """True once any outcome for the slot is durable."""
        return bool(self.recorder.select_events(delivery_id(slot_key), limit=1))

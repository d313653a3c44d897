"""Scheduler aggregates. Events are facts carrying the data of the decision."""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

_NS = uuid5(NAMESPACE_URL, "https://liteclaw.ai/scheduler")


def profile_id(user_id: str) -> UUID:
    return uuid5(_NS, f"profile:{user_id}")


class Profile(Aggregate):
    """A user's timezone and the chat's /heartbeats toggle."""

    @staticmethod
    def create_id(user_id: str) -> UUID:
        return profile_id(user_id)

    @event("Registered")
    def __init__(self, user_id: str, timezone: str, heartbeats_enabled: bool) -> None:
        self.user_id = user_id
        self.timezone = timezone
        self.heartbeats_enabled = heartbeats_enabled

    @event("Changed")
    def change(self, timezone: str, heartbeats_enabled: bool) -> None:
        self.timezone = timezone
        self.heartbeats_enabled = heartbeats_enabled


class HeartbeatJob(Aggregate):
    """One recurring heartbeat: a cron in the owner's zone and where to deliver it."""

    @event("Created")
    def __init__(
        self, user_id: str, job_type: str, schedule_cron: str, channel: dict[str, Any]
    ) -> None:
        self.user_id = user_id
        self.job_type = job_type
        self.schedule_cron = schedule_cron
        self.channel = channel
        self.enabled = True
        self.deleted = False
        # Bumped by every schedule change, so slot keys of the old schedule never collide
        # with the new one's.
        self.schedule_version = 1
